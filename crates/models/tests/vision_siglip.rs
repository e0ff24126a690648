//! SigLIP vision tower: parity with Hugging Face transformers (reference/siglip_reference.py, and
//! reference/siglip_layouts_reference.py for the three checkpoint layouts), gradient check of the
//! unfrozen blocks, and weight-shape errors.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use vlmix_engine::params::ParamStore;
use vlmix_engine::safetensors_io::{write_f32_tensors, F32View, SafetensorsFile};
use vlmix_models::vision::encoder::{open_encoder, EncoderSpec, FeatureLayer};
use vlmix_models::vision::preprocess;
use vlmix_models::vision::siglip::{SiglipConfig, SiglipTape, SiglipVision};
use vlmix_models::vision::tail::EncoderTail;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/siglip_tiny")
}

fn config() -> SiglipConfig {
    SiglipConfig::from_file(&fixture().join("config.json")).unwrap()
}

/// Asserts the largest absolute difference is within `tol`, and returns it.
fn assert_close(name: &str, got: &[f32], want: &[f32], tol: f32) -> f32 {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let worst = got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(0.0f32, f32::max);
    assert!(worst <= tol, "{name}: max abs error {worst} > {tol}");
    worst
}

/// One SigLIP tower of an unusual shape (image 35, patch 7, width 42, 6 heads of 7) saved in the three
/// layouts Hugging Face checkpoints come in: `SiglipVisionModel` without the `vision_model.` prefix (recent
/// transformers), with it (older transformers), and a full `SiglipModel` with a text tower.
const LAYOUTS: [&str; 3] = ["siglip_layout_unprefixed", "siglip_layout_prefixed", "siglip_layout_full"];

fn layout_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

#[test]
fn penultimate_and_last_layers_match_transformers() {
    let outputs = SafetensorsFile::open(&fixture().join("outputs.safetensors")).unwrap();
    let pixels = outputs.f32("pixel_values").unwrap().data;
    let config = config();
    assert_eq!((config.tokens(), config.hidden_size), (16, 32));
    for (layer, want) in [(FeatureLayer::Penultimate, "penultimate"), (FeatureLayer::Last, "last_hidden_state")] {
        let mut params = ParamStore::new(vlmix_engine::Cpu::new().unwrap());
        let model =
            SiglipVision::register(&config, &fixture().join("model.safetensors"), layer, 0, &mut params).unwrap();
        let got = model.forward(&params, &pixels, 2, None).unwrap();
        assert_close(want, &got, &outputs.f32(want).unwrap().data, 1e-4);
    }
}

#[test]
fn every_checkpoint_layout_of_an_odd_shaped_tower_matches_transformers() {
    for name in LAYOUTS {
        let dir = layout_fixture(name);
        let outputs = SafetensorsFile::open(&dir.join("outputs.safetensors")).unwrap();
        let pixels = outputs.f32("pixel_values").unwrap().data;
        let config = SiglipConfig::from_file(&dir.join("config.json")).unwrap();
        assert_eq!(
            (config.grid(), config.patch_size, config.hidden_size, config.num_attention_heads),
            (5, 7, 42, 6),
            "{name}"
        );
        for (layer, want) in [(FeatureLayer::Penultimate, "penultimate"), (FeatureLayer::Last, "last_hidden_state")] {
            let mut params = ParamStore::new(vlmix_engine::Cpu::new().unwrap());
            let model = SiglipVision::register(&config, &dir.join("model.safetensors"), layer, 0, &mut params).unwrap();
            let got = model.forward(&params, &pixels, 2, None).unwrap();
            let worst = assert_close(&format!("{name} {want}"), &got, &outputs.f32(want).unwrap().data, 1e-4);
            eprintln!("{name} {want}: max abs error {worst:.2e}");
        }
    }
}

/// Whatever the file's layout, the tower registers under the same `vision_model.` names with the same
/// values, so a VLM checkpoint holding a trained tail loads against any of them; the text tower, the
/// logit scale and bias and the pooling head are not read.
#[test]
fn every_layout_registers_the_same_vision_model_parameters() {
    let registered = |name: &str| -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let dir = layout_fixture(name);
        let config = SiglipConfig::from_file(&dir.join("config.json")).unwrap();
        let mut params = ParamStore::new(vlmix_engine::Cpu::new().unwrap());
        SiglipVision::register(&config, &dir.join("model.safetensors"), FeatureLayer::Last, 1, &mut params).unwrap();
        params
            .ids()
            .map(|id| (params.info(id).name.clone(), params.info(id).shape.clone(), params.value(id).to_vec()))
            .collect()
    };
    let want = registered("siglip_layout_prefixed");
    assert!(
        want.iter().all(|(name, _, _)| name.starts_with("vision_model.") && !name.contains("head.")),
        "{:?}",
        want.iter().map(|p| &p.0).collect::<Vec<_>>()
    );
    assert!(want.iter().any(|(name, _, _)| name == "vision_model.encoder.layers.2.self_attn.in_proj.weight"));
    for name in ["siglip_layout_unprefixed", "siglip_layout_full"] {
        assert!(registered(name) == want, "{name}: parameters differ from the prefixed layout's");
    }
}

#[test]
fn encoder_and_tail_open_an_unprefixed_directory() {
    let dir = layout_fixture("siglip_layout_unprefixed");
    let outputs = SafetensorsFile::open(&dir.join("outputs.safetensors")).unwrap();
    let pixels = outputs.f32("pixel_values").unwrap().data;
    let spec = EncoderSpec {
        source: dir.display().to_string(),
        layer: FeatureLayer::Last,
        resolution: None,
        trainable_blocks: 1,
    };
    let trunk = open_encoder(&spec, Path::new("/nonexistent")).unwrap();
    assert_eq!((trunk.tokens(), trunk.width()), (25, 42));
    let hidden = trunk.encode(&pixels, 2).unwrap();
    let mut params = ParamStore::new(vlmix_engine::Cpu::new().unwrap());
    let mut tail = EncoderTail::open(&spec, &mut params, 0).unwrap().expect("one trainable block gives a tail");
    let got = tail.forward(&params, &hidden, 2, false).unwrap();
    assert_close("unprefixed trunk + tail", got, &outputs.f32("last_hidden_state").unwrap().data, 1e-4);
}

#[test]
fn a_file_in_neither_layout_is_refused_naming_it_and_its_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let data = vec![0.0f32; 4];
    let names = ["vision_tower.vision_model.embeddings.patch_embedding.bias", "multi_modal_projector.linear_1.bias"];
    write_f32_tensors(&path, names.iter().map(|n| (n.to_string(), F32View { shape: vec![4], data: &data })), None)
        .unwrap();
    let config = SiglipConfig::from_file(&layout_fixture("siglip_layout_unprefixed").join("config.json")).unwrap();
    let err = format!(
        "{:#}",
        SiglipVision::register(
            &config,
            &path,
            FeatureLayer::Last,
            0,
            &mut ParamStore::new(vlmix_engine::Cpu::new().unwrap())
        )
        .err()
        .unwrap()
    );
    assert!(err.contains(&path.display().to_string()) && err.contains("not a SigLIP vision checkpoint"), "{err}");
    assert!(names.iter().all(|n| err.contains(n)) && err.contains("found 2 tensors"), "{err}");

    // In the unprefixed layout a missing tensor is named as the file would hold it.
    let file = SafetensorsFile::open(&layout_fixture("siglip_layout_unprefixed").join("model.safetensors")).unwrap();
    let kept: Vec<(String, Vec<usize>, Vec<f32>)> = file
        .names()
        .into_iter()
        .filter(|n| n != "encoder.layers.1.mlp.fc2.bias")
        .map(|n| {
            let t = file.f32(&n).unwrap();
            (n, t.shape, t.data)
        })
        .collect();
    write_f32_tensors(&path, kept.iter().map(|(n, s, d)| (n.clone(), F32View { shape: s.clone(), data: d })), None)
        .unwrap();
    let err = format!(
        "{:#}",
        SiglipVision::register(
            &config,
            &path,
            FeatureLayer::Last,
            0,
            &mut ParamStore::new(vlmix_engine::Cpu::new().unwrap())
        )
        .err()
        .unwrap()
    );
    assert!(err.contains("missing tensor encoder.layers.1.mlp.fc2.bias (expected shape [42])"), "{err}");
}

#[test]
fn encoder_from_directory_preprocesses_pngs_like_the_hf_processor() {
    let outputs = SafetensorsFile::open(&fixture().join("outputs.safetensors")).unwrap();
    let spec = EncoderSpec {
        source: fixture().display().to_string(),
        layer: FeatureLayer::Penultimate,
        resolution: None,
        trainable_blocks: 0,
    };
    let encoder = open_encoder(&spec, Path::new("/nonexistent")).unwrap();
    assert_eq!((encoder.tokens(), encoder.width()), (16, 32));
    let pixels: Vec<f32> = ["image_a.png", "image_b.png"]
        .iter()
        .flat_map(|name| encoder.preprocess().pixels(&preprocess::load(&fixture().join(name)).unwrap()).unwrap())
        .collect();
    let got = encoder.encode(&pixels, 2).unwrap();
    assert_close("penultimate from PNGs", &got, &outputs.f32("penultimate").unwrap().data, 1e-4);
}

/// Cutting the tower into a frozen trunk (cached) and a trainable tail changes nothing in the forward.
#[test]
fn trunk_then_tail_equals_the_whole_tower() {
    let pixels =
        SafetensorsFile::open(&fixture().join("outputs.safetensors")).unwrap().f32("pixel_values").unwrap().data;
    let (config, weights) = (config(), fixture().join("model.safetensors"));
    for layer in [FeatureLayer::Penultimate, FeatureLayer::Last] {
        let mut whole_params = ParamStore::new(vlmix_engine::Cpu::new().unwrap());
        let whole = SiglipVision::register(&config, &weights, layer, 0, &mut whole_params)
            .unwrap()
            .forward(&whole_params, &pixels, 2, None)
            .unwrap();
        for tail_blocks in 1..=config.used_blocks(layer) {
            let (mut trunk_params, mut tail_params) = (
                ParamStore::new(vlmix_engine::Cpu::new().unwrap()),
                ParamStore::new(vlmix_engine::Cpu::new().unwrap()),
            );
            let trunk = SiglipVision::register_trunk(&config, &weights, layer, tail_blocks, &mut trunk_params).unwrap();
            let tail = SiglipVision::register_tail(&config, &weights, layer, tail_blocks, &mut tail_params).unwrap();
            assert!(trunk_params.ids().all(|id| !trunk_params.info(id).flags.trainable), "the trunk is frozen");
            assert!(tail_params.ids().all(|id| tail_params.info(id).flags.trainable), "the tail trains");
            let hidden = trunk.forward(&trunk_params, &pixels, 2, None).unwrap();
            let got = tail.forward(&tail_params, &hidden, 2, None).unwrap();
            assert_close(&format!("{} with a {tail_blocks}-block tail", layer.name()), &got, &whole, 1e-6);
        }
    }
    let too_many = config.used_blocks(FeatureLayer::Penultimate) + 1;
    let err = SiglipVision::register_tail(
        &config,
        &weights,
        FeatureLayer::Penultimate,
        too_many,
        &mut ParamStore::new(vlmix_engine::Cpu::new().unwrap()),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("cannot unfreeze"), "{err}");
}

/// Loss = sum(features * r); analytic gradients of the unfrozen last block and post-layernorm
/// against central differences, and no gradient at all for frozen parameters.
#[test]
fn unfrozen_last_block_gradients_match_finite_differences() {
    let outputs = SafetensorsFile::open(&fixture().join("outputs.safetensors")).unwrap();
    let pixels = outputs.f32("pixel_values").unwrap().data;
    let config = config();
    let mut params = ParamStore::new(vlmix_engine::Cpu::new().unwrap());
    let model =
        SiglipVision::register(&config, &fixture().join("model.safetensors"), FeatureLayer::Last, 1, &mut params)
            .unwrap();
    let n = 2 * config.tokens() * config.hidden_size;
    let r: Vec<f32> = (0..n).map(|i| ((i * 37 % 29) as f32 - 14.0) / 15.0).collect();
    let loss = |params: &ParamStore| -> f64 {
        let f = model.forward(params, &pixels, 2, None).unwrap();
        f.iter().zip(&r).map(|(&a, &b)| a as f64 * b as f64).sum()
    };
    let mut tape = SiglipTape::new();
    model.forward(&params, &pixels, 2, Some(&mut tape)).unwrap();
    model.backward(&mut params, &mut tape, &r).unwrap();

    let trainable = |name: &str| name.contains("layers.2.") || name.contains("post_layernorm");
    let ids: Vec<_> = params.ids().collect();
    let mut checked = 0;
    for id in ids {
        let name = params.info(id).name.clone();
        let grad = params.grad(id).to_vec();
        assert_eq!(params.info(id).flags.trainable, trainable(&name), "{name}: trainable flag");
        if !trainable(&name) {
            assert!(grad.iter().all(|&g| g == 0.0), "{name}: frozen parameter got a gradient");
            continue;
        }
        assert!(grad.iter().any(|&g| g != 0.0), "{name}: gradient is all zero");
        for i in (0..grad.len()).step_by(grad.len().div_ceil(12)) {
            let orig = params.value(id)[i];
            let eps = 1e-2f32;
            params.value_mut(id)[i] = orig + eps;
            let plus = loss(&params);
            params.value_mut(id)[i] = orig - eps;
            let minus = loss(&params);
            params.value_mut(id)[i] = orig;
            let numeric = (plus - minus) / (2.0 * eps as f64);
            assert!(
                (grad[i] as f64 - numeric).abs() <= 1e-2 * (1.0 + numeric.abs()),
                "{name}[{i}]: analytic {} vs numeric {numeric}",
                grad[i]
            );
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} entries checked");
}

#[test]
fn wrong_or_missing_weights_name_the_tensor_and_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let file = SafetensorsFile::open(&fixture().join("model.safetensors")).unwrap();
    let mut tensors: HashMap<String, (Vec<usize>, Vec<f32>)> = HashMap::new();
    for name in file.names() {
        let t = file.f32(&name).unwrap();
        tensors.insert(name, (t.shape, t.data));
    }
    let write = |tensors: &HashMap<String, (Vec<usize>, Vec<f32>)>| {
        let path = dir.path().join("model.safetensors");
        write_f32_tensors(
            &path,
            tensors.iter().map(|(n, (s, d))| (n.clone(), F32View { shape: s.clone(), data: d })),
            None,
        )
        .unwrap();
        path
    };
    let mut wrong = tensors.clone();
    let name = "vision_model.encoder.layers.1.mlp.fc1.weight";
    wrong.get_mut(name).unwrap().0 = vec![32, 64];
    let err = format!(
        "{:#}",
        SiglipVision::register(
            &config(),
            &write(&wrong),
            FeatureLayer::Last,
            0,
            &mut ParamStore::new(vlmix_engine::Cpu::new().unwrap())
        )
        .err()
        .unwrap()
    );
    assert!(err.contains(name) && err.contains("[32, 64]") && err.contains("[64, 32]"), "{err}");

    let mut missing = tensors;
    missing.remove("vision_model.encoder.layers.0.self_attn.k_proj.bias");
    let err = format!(
        "{:#}",
        SiglipVision::register(
            &config(),
            &write(&missing),
            FeatureLayer::Last,
            0,
            &mut ParamStore::new(vlmix_engine::Cpu::new().unwrap())
        )
        .err()
        .unwrap()
    );
    assert!(
        err.contains("missing tensor vision_model.encoder.layers.0.self_attn.k_proj.bias") && err.contains("[32]"),
        "{err}"
    );
}

#[test]
fn config_errors_name_the_field() {
    let base = serde_json::json!({"hidden_size": 30, "num_attention_heads": 4, "image_size": 32, "patch_size": 8});
    let err = SiglipConfig::from_json(&base).unwrap_err().to_string();
    assert!(err.contains("not divisible"), "{err}");
    let err = SiglipConfig::from_json(&serde_json::json!({"hidden_act": "swish"})).unwrap_err().to_string();
    assert!(err.contains("hidden_act"), "{err}");
    let err = SiglipConfig::from_json(&serde_json::json!({"patch_size": "14"})).unwrap_err().to_string();
    assert!(err.contains("patch_size"), "{err}");
    let full = serde_json::json!({"model_type": "siglip", "vision_config": {"hidden_size": 1152, "intermediate_size": 4304,
        "num_hidden_layers": 27, "num_attention_heads": 16, "image_size": 384, "patch_size": 14, "model_type": "siglip_vision_model"}});
    let so400m = SiglipConfig::from_json(&full).unwrap();
    assert_eq!(so400m.tokens(), 729, "SO400M/14@384 gives 27x27 patch tokens");
}
