//! open_lm checkpoints in, open_lm checkpoints out. Fixtures come from
//! `reference/openlm_import_reference.py` (tiny open_lm models in both file layouts, float64 logits);
//! each must import and give the fixture's logits to 1e-5 (relative to the largest logit).

use safetensors::tensor::{Dtype, TensorView};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use vlmix_engine::safetensors_io::SafetensorsFile;
use vlmix_models::lm::openlm_io::{export_openlm, import_openlm, ImportOptions, Imported, InvFreqPolicy};
use vlmix_models::lm::{Lm, LmInput, NormKind};

const TOLERANCE: f64 = 1e-5;

fn scratch_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(tag).tempdir().unwrap()
}

fn case_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/openlm_import").join(case)
}

fn import_case(case: &str, inv_freq: InvFreqPolicy) -> Imported {
    let dir = case_dir(case);
    let spec: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let config = spec["config"].as_str().map(|c| dir.join(c));
    import_openlm(&dir.join(spec["source"].as_str().unwrap()), &ImportOptions { config, inv_freq })
        .unwrap_or_else(|e| panic!("{case}: {e:#}"))
}

/// max |logits - fixture| / max |fixture| of the imported model on the fixture's inputs.
fn logits_deviation(case: &str, imported: &Imported) -> f64 {
    let expected = SafetensorsFile::open(&case_dir(case).join("expected.safetensors")).unwrap();
    let inputs: Vec<u32> = expected.i64("inputs").unwrap().data.iter().map(|&t| t as u32).collect();
    let want = expected.f32("logits").unwrap();
    let mut params = vlmix_engine::params::ParamStore::new(vlmix_engine::Cpu::new().unwrap());
    let mut lm = Lm::new(imported.config.clone(), &mut params, 0).unwrap();
    for id in params.ids().collect::<Vec<_>>() {
        let name = params.info(id).name.clone();
        params.value_mut(id).copy_from_slice(imported.params.value(imported.params.id(&name).unwrap()));
    }
    let (batch, seq) = (want.shape[0], want.shape[1]);
    let got = lm.logits(&params, &LmInput::tokens(batch, seq, &inputs)).unwrap();
    let diff = got.iter().zip(&want.data).map(|(g, w)| (*g as f64 - *w as f64).abs()).fold(0.0, f64::max);
    diff / want.data.iter().map(|w| (*w as f64).abs()).fold(0.0, f64::max)
}

#[test]
fn every_fixture_imports_with_the_fixtures_logits() {
    let cases = [
        ("hf_dclm", NormKind::GainOnlyLayerNorm, false, false),
        ("pt_layer_norm_ddp", NormKind::LayerNorm, false, false),
        ("pt_tied_rms", NormKind::RmsNorm, true, false),
        ("hf_post_embed_norm", NormKind::LayerNorm, false, true),
    ];
    for (case, norm, tied, post) in cases {
        let imported = import_case(case, InvFreqPolicy::Check);
        let c = &imported.config;
        assert_eq!(
            (c.norm, c.tied_embeddings, c.post_embed_norm, c.rope_inv_freq.is_none()),
            (norm, tied, post, true),
            "{case}: {c:?}"
        );
        assert!(
            imported.notes.iter().all(|n| !n.starts_with("warning")),
            "{case}: exact inv_freq needs no warning: {:?}",
            imported.notes
        );
        let dev = logits_deviation(case, &imported);
        eprintln!("{case} ({}): logits deviate {dev:.2e}", imported.layout);
        assert!(dev < TOLERANCE, "{case}: logits deviate {dev:.2e}");
    }
}

#[test]
fn bf16_inv_freq_warns_and_can_be_kept() {
    // Checked: within 1e-3 of the exact frequencies, so imported with a warning naming the largest
    // difference; the fixture's logits use the stored (bf16) ones, as open_lm does.
    let checked = import_case("pt_bf16_inv_freq", InvFreqPolicy::Check);
    let warning = checked.notes.iter().find(|n| n.starts_with("warning")).expect("a warning");
    assert!(warning.contains("inv_freq (BF16)") && warning.contains("9.765e-5"), "{warning}");
    assert!(checked.config.rope_inv_freq.is_none());
    let kept = import_case("pt_bf16_inv_freq", InvFreqPolicy::Keep);
    let freqs = kept.config.rope_inv_freq.clone().expect("kept");
    assert_eq!(freqs[0], 1.0);
    assert_eq!(freqs[1], f32::from_bits(0x3dcd_0000), "0.1 rounded to bf16 (0.10009765625)");
    let (dev_exact, dev_kept) =
        (logits_deviation("pt_bf16_inv_freq", &checked), logits_deviation("pt_bf16_inv_freq", &kept));
    eprintln!("pt_bf16_inv_freq: logits deviate {dev_kept:.2e} keeping the stored frequencies, {dev_exact:.2e} with the exact ones");
    assert!(dev_kept < TOLERANCE, "kept: {dev_kept:.2e}");
    // The kept frequencies survive model.toml.
    let toml = kept.config.to_toml();
    assert_eq!(vlmix_models::lm::LmConfig::from_toml_str(&toml, "kept").unwrap(), kept.config);
}

#[test]
fn export_then_import_is_bit_identical() {
    for case in ["hf_dclm", "pt_tied_rms", "hf_post_embed_norm", "pt_layer_norm_ddp"] {
        let first = import_case(case, InvFreqPolicy::Check);
        let dir = scratch_dir(&format!("openlm-export-{case}"));
        let out = dir.path();
        export_openlm(&first.config, &first.params, out).unwrap();
        let file = SafetensorsFile::open(&out.join("model.safetensors")).unwrap();
        assert!(file.names().iter().all(|n| n.starts_with("model.")), "{case}: HF keys");
        assert!(
            file.names().contains(&"model.output.weight".to_string()),
            "{case}: open_lm's state dict always names output.weight"
        );
        let again = import_openlm(out, &ImportOptions::default()).unwrap();
        assert_eq!(again.config, first.config, "{case}: config round trip");
        for id in first.params.ids() {
            let name = &first.params.info(id).name;
            let back = again.params.value(again.params.id(name).unwrap());
            assert!(
                first.params.value(id).iter().zip(back).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{case}: {name} changed"
            );
        }
        let config: Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["model_type"], "openlm");
        assert_eq!(config["dim"], first.config.d_model);
    }
}

/// The exported `hf_dclm` with `edit` applied to its tensors (name -> dtype, shape, f32 values).
fn edited_export(tag: &str, edit: impl FnOnce(&mut Vec<(String, Dtype, Vec<usize>, Vec<f32>)>)) -> tempfile::TempDir {
    let first = import_case("hf_dclm", InvFreqPolicy::Check);
    let dir = scratch_dir(&format!("openlm-edit-{tag}"));
    let out = dir.path();
    export_openlm(&first.config, &first.params, out).unwrap();
    let file = SafetensorsFile::open(&out.join("model.safetensors")).unwrap();
    let mut tensors: Vec<_> = file
        .names()
        .into_iter()
        .map(|n| {
            let t = file.f32(&n).unwrap();
            (n, Dtype::F32, t.shape, t.data)
        })
        .collect();
    drop(file);
    edit(&mut tensors);
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, dtype, _, v)| match dtype {
            Dtype::BF16 => v.iter().flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes()).collect(),
            _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        })
        .collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, dtype, shape, _), b)| (n.clone(), TensorView::new(*dtype, shape.clone(), b).unwrap()))
        .collect();
    std::fs::write(
        out.join("model.safetensors"),
        safetensors::serialize(views, None::<HashMap<String, String>>).unwrap(),
    )
    .unwrap();
    dir
}

fn import_error(dir: &Path, inv_freq: InvFreqPolicy) -> String {
    match import_openlm(dir, &ImportOptions { config: None, inv_freq }) {
        Ok(_) => panic!("{} imported", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn unexpected_keys_wrong_shapes_and_off_inv_freq_are_refused_by_name() {
    let extra = edited_export("extra", |t| {
        t.push(("model.layers.0.attention.rel_bias".into(), Dtype::F32, vec![4], vec![0.0; 4]))
    });
    let err = import_error(extra.path(), InvFreqPolicy::Check);
    assert!(err.contains("unexpected tensors") && err.contains("layers.0.attention.rel_bias"), "{err}");

    let shape = edited_export("shape", |t| {
        let w3 = t.iter_mut().find(|x| x.0 == "model.layers.1.feed_forward.w3.weight").unwrap();
        w3.2 = vec![w3.2[1], w3.2[0]];
    });
    let err = import_error(shape.path(), InvFreqPolicy::Check);
    assert!(
        err.contains("layers.1.feed_forward.w3.weight") && err.contains("[256, 32]") && err.contains("[32, 256]"),
        "{err}"
    );

    // A bf16 buffer 2e-3 off (as bf16 rounds a large model's frequencies near 1) needs a decision.
    let off = edited_export("inv-freq", |t| {
        let f = t.iter_mut().find(|x| x.0 == "model.layers.1.attention.pos_embed.inv_freq").unwrap();
        f.1 = Dtype::BF16;
        f.3[1] += 2e-3;
    });
    let err = import_error(off.path(), InvFreqPolicy::Check);
    assert!(err.contains("layers.1.attention.pos_embed.inv_freq (BF16)") && err.contains("--inv-freq keep"), "{err}");
    let err = import_error(off.path(), InvFreqPolicy::Keep);
    assert!(
        err.contains("layers.1.attention.pos_embed.inv_freq differs from layers.0"),
        "layers disagree, so there is no one set to keep: {err}"
    );
    let exact = import_openlm(off.path(), &ImportOptions { config: None, inv_freq: InvFreqPolicy::Exact }).unwrap();
    assert!(exact.config.rope_inv_freq.is_none() && exact.notes.iter().any(|n| n.contains("warning")));

    let err = import_error(&case_dir("no_such_case"), InvFreqPolicy::Check);
    assert!(err.contains("no_such_case"), "{err}");
}

/// `case`'s torch checkpoint without the tensors `drop` picks, as a safetensors file alone in a
/// fresh directory (no `config.json` beside it), keeping the checkpoint's `module.` names.
fn checkpoint_without(case: &str, drop: impl Fn(&str) -> bool) -> (tempfile::TempDir, PathBuf) {
    let tensors = vlmix_engine::torch_file::read_state_dict(&case_dir(case).join("epoch_1.pt")).unwrap();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .filter(|(n, _)| !drop(n))
        .map(|(n, t)| (n.clone(), TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap()))
        .collect();
    let dir = scratch_dir(&format!("openlm-drop-{case}"));
    let path = dir.path().join("epoch_1.safetensors");
    std::fs::write(&path, safetensors::serialize(views, None::<HashMap<String, String>>).unwrap()).unwrap();
    (dir, path)
}

/// Regression (issue 26): a missing `tok_embeddings.weight` with `--config` panicked on a map index.
#[test]
fn missing_embedding_is_an_error_naming_file_and_tensor() {
    let (_dir, path) = checkpoint_without("pt_layer_norm_ddp", |n| n == "module.tok_embeddings.weight");
    let config = Some(case_dir("pt_layer_norm_ddp").join("model.json"));
    let err = match import_openlm(&path, &ImportOptions { config, inv_freq: InvFreqPolicy::Check }) {
        Ok(_) => panic!("imported without embeddings"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("epoch_1.safetensors") && err.contains("tok_embeddings.weight"), "{err}");
}

/// Regression (issue 26): without `--config`, a missing layer-0 `inv_freq` panicked; another layer's
/// buffer gives `n_heads`, and only when none is left is `--config` asked for.
#[test]
fn missing_inv_freq_without_config_infers_from_another_layer() {
    let (_dir, path) = checkpoint_without("pt_layer_norm_ddp", |n| n == "module.layers.0.attention.pos_embed.inv_freq");
    let full = import_case("pt_layer_norm_ddp", InvFreqPolicy::Check);
    let imported = import_openlm(&path, &ImportOptions::default()).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(imported.config.n_heads, full.config.n_heads);

    let (_dir, path) = checkpoint_without("pt_layer_norm_ddp", |n| n.ends_with("inv_freq"));
    let err = import_error(&path, InvFreqPolicy::Check);
    assert!(err.contains("epoch_1.safetensors") && err.contains("inv_freq") && err.contains("--config"), "{err}");
}
