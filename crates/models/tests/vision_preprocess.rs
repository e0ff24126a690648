//! Preprocessing parity with Hugging Face's SiglipImageProcessor (fixture: reference/siglip_reference.py).
use std::path::{Path, PathBuf};
use vlmix_engine::safetensors_io::SafetensorsFile;
use vlmix_models::vision::preprocess::{self, Preprocess};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/siglip_tiny")
}

#[test]
fn siglip_processor_pixels_match_transformers() {
    let dir = fixture();
    let pre = Preprocess::from_hf_config(&dir.join("preprocessor_config.json")).unwrap();
    let outputs = SafetensorsFile::open(&dir.join("outputs.safetensors")).unwrap();
    let want_u8 = outputs.i64("resized_u8").unwrap();
    let want_pixels = outputs.f32("pixel_values").unwrap();
    assert_eq!(want_pixels.shape, vec![2, 3, 32, 32]);
    let per_image = 3 * 32 * 32;
    for (i, name) in ["image_a.png", "image_b.png"].iter().enumerate() {
        let image = preprocess::load(&dir.join(name)).unwrap();
        let resized = pre.resize_image(&image).unwrap();
        let got: Vec<i64> = resized.as_raw().iter().map(|&v| v as i64).collect();
        assert_eq!(got, want_u8.data[i * per_image..(i + 1) * per_image], "{name}: resized pixels differ from Pillow");
        let pixels = pre.pixels(&image).unwrap();
        for (g, w) in pixels.iter().zip(&want_pixels.data[i * per_image..(i + 1) * per_image]) {
            assert!((g - w).abs() <= 1e-6, "{name}: {g} vs {w}");
        }
    }
}
