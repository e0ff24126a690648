//! Issue 26: image decoding as vlmix does it (`image_io::decode_rgb` for PNG / JPEG / WebP,
//! `image_io::rasterize_svg` for SVG) given thousands of seeded damaged files ends in `Ok` or a clean
//! `Err`. A binary of its own: its allocation cap is the decoder's limit, above the 64 MiB of the
//! other readers' tests, so a declared size is refused by the limit, never by the cap.

use image::codecs::jpeg::JpegEncoder;
use image::codecs::webp::WebPEncoder;
use image::{ExtendedColorType, ImageEncoder, Rgb, RgbImage, Rgba, RgbaImage};
use vlmix_data::image_io::{decode_rgb, encode_png, rasterize_svg, MAX_DECODED_BYTES};
use vlmix_mutation::{byte_mutants, check, CappedAlloc, Mutant, Rng};

/// No single allocation may exceed what the decoder's limits allow.
#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc { cap: MAX_DECODED_BYTES as usize };

/// Inputs per reader: 1,000 in the test suite, more under scripts/fuzz.sh.
fn per_reader() -> usize {
    vlmix_mutation::per_reader(1000)
}

fn picture() -> RgbImage {
    RgbImage::from_fn(24, 17, |x, y| Rgb([(x * 10) as u8, (y * 15) as u8, ((x ^ y) * 7) as u8]))
}

/// Decodes and checks what a caller relies on: the size matches the pixels held.
fn decode(bytes: &[u8]) -> anyhow::Result<(u32, u32)> {
    let image = decode_rgb(bytes)?;
    anyhow::ensure!(image.as_raw().len() == image.width() as usize * image.height() as usize * 3);
    Ok(image.dimensions())
}

/// Offsets of each PNG chunk's length, type, data and CRC.
fn png_chunks(png: &[u8]) -> Vec<usize> {
    let mut out = vec![8];
    let mut at = 8;
    while at + 8 <= png.len() {
        let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
        out.extend([at + 4, at + 8, at + 8 + len, at + 12 + len]);
        at += 12 + len;
    }
    out
}

/// `png` with IHDR declaring `width` x `height` and a CRC that matches, so the size is believed.
fn png_with_size(png: &[u8], width: u32, height: u32) -> Vec<u8> {
    let mut out = png.to_vec();
    out[16..20].copy_from_slice(&width.to_be_bytes());
    out[20..24].copy_from_slice(&height.to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(&out[12..29]);
    out[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    out
}

/// Sizes that break decoders: zero, just over the limits, the formats' largest.
const SIZES: [(u32, u32); 8] = [
    (0, 17),
    (24, 0),
    (16_385, 1),
    (1, 16_385),
    (16_384, 16_384),
    (9_500, 9_500),
    (65_535, 65_535),
    (0x7fff_ffff, 0x7fff_ffff),
];

#[test]
fn png_survives_mutation() {
    let base = encode_png(&picture()).unwrap();
    assert_eq!(decode(&base).unwrap(), (24, 17), "the base PNG must decode");
    let mut mutants = byte_mutants(&base, &png_chunks(&base), 201, per_reader());
    for (w, h) in SIZES {
        mutants.push(Mutant { bytes: png_with_size(&base, w, h), what: format!("IHDR {w} x {h}") });
    }
    check("PNG image", &mutants, decode);
}

/// Regression (issue 26): the decoder's default limit allowed 512 MiB per image; a header's size is
/// now refused against vlmix's own limits, naming them, before the pixel buffer exists.
#[test]
fn huge_declared_image_sizes_are_refused_before_allocation() {
    let base = encode_png(&picture()).unwrap();
    for (w, h) in [(16_385, 1), (9_500, 9_500), (0x7fff_ffff, 0x7fff_ffff)] {
        let err = format!("{:#}", decode_rgb(&png_with_size(&base, w, h)).unwrap_err());
        assert!(err.contains("over vlmix's limits") || err.contains("corrupt Png"), "{w} x {h}: {err}");
    }
    let err = format!("{:#}", decode_rgb(&png_with_size(&base, 9_500, 9_500)).unwrap_err());
    assert!(err.contains("over vlmix's limits (16384 pixels a side, 256 MiB decoded)"), "{err}");
}

fn jpeg() -> Vec<u8> {
    let mut bytes = Vec::new();
    JpegEncoder::new_with_quality(&mut bytes, 80)
        .write_image(picture().as_raw(), 24, 17, ExtendedColorType::Rgb8)
        .unwrap();
    bytes
}

/// Offsets of every JPEG marker (0xFF then a marker byte).
fn jpeg_markers(jpeg: &[u8]) -> Vec<usize> {
    (0..jpeg.len().saturating_sub(1)).filter(|&i| jpeg[i] == 0xff && !matches!(jpeg[i + 1], 0x00 | 0xff)).collect()
}

#[test]
fn jpeg_survives_mutation() {
    let base = jpeg();
    assert_eq!(decode(&base).unwrap(), (24, 17), "the base JPEG must decode");
    let markers = jpeg_markers(&base);
    let mut mutants = byte_mutants(&base, &markers, 211, per_reader());
    // SOF0: marker, length (2), precision (1), height (2), width (2).
    let sof = *markers.iter().find(|&&i| base[i + 1] == 0xc0).expect("a baseline JPEG has SOF0");
    for (w, h) in SIZES {
        let mut bytes = base.clone();
        bytes[sof + 5..sof + 7].copy_from_slice(&(h.min(65_535) as u16).to_be_bytes());
        bytes[sof + 7..sof + 9].copy_from_slice(&(w.min(65_535) as u16).to_be_bytes());
        mutants.push(Mutant { bytes, what: format!("SOF0 {w} x {h}") });
    }
    check("JPEG image", &mutants, decode);
}

#[test]
fn webp_survives_mutation() {
    let rgba = RgbaImage::from_fn(24, 17, |x, y| Rgba([(x * 10) as u8, (y * 15) as u8, 90, (x * 11) as u8]));
    let mut base = Vec::new();
    WebPEncoder::new_lossless(&mut base).write_image(rgba.as_raw(), 24, 17, ExtendedColorType::Rgba8).unwrap();
    assert_eq!(decode(&base).unwrap(), (24, 17), "the base WebP must decode");
    // RIFF size, WEBP, chunk tag, chunk size, VP8L signature and its packed 14-bit sizes.
    let mut mutants = byte_mutants(&base, &[4, 8, 12, 16, 20, 21, 25], 221, per_reader());
    for packed in [u32::MAX, 0x0fff_ffff, 0x0000_3fff, 0x0fff_c000] {
        let mut bytes = base.clone();
        bytes[21..25].copy_from_slice(&packed.to_le_bytes());
        mutants.push(Mutant { bytes, what: format!("VP8L size bits {packed:#x}") });
    }
    check("WebP image", &mutants, decode);
}

const SVG: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="40" height="30" viewBox="0 0 40 30">
<defs><linearGradient id="g" x1="0" y1="0" x2="1" y2="1"><stop offset="0" stop-color="#f00"/><stop offset="1" stop-color="#00f"/></linearGradient>
<filter id="f" x="-0.1" y="-0.1" width="1.2" height="1.2"><feGaussianBlur stdDeviation="1.5"/></filter>
<clipPath id="c"><circle cx="20" cy="15" r="12"/></clipPath></defs>
<g transform="translate(2 3) scale(0.9)" clip-path="url(#c)"><rect x="1" y="2" width="30" height="20" fill="url(#g)" filter="url(#f)"/>
<path d="M 5 5 L 35 25 Q 20 0 5 25 Z" stroke="#000" stroke-width="2" fill="none"/></g>
<use xlink:href="#c" x="3"/><text x="2" y="28" font-size="6">hi</text></svg>"##;

/// SVG mutants: numbers replaced by extremes (sizes, blur radii, coordinates), elements nested
/// deep or repeated, then byte mutants at the markup's edges for the rest.
fn svg_mutants(seed: u64, count: usize) -> Vec<Mutant> {
    const EXTREMES: [&str; 9] = ["0", "-1", "1e9", "-1e9", "1e38", "3e38", "NaN", "1e-30", "99999"];
    let numbers: Vec<(usize, usize)> = {
        let b = SVG.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_alphanumeric() && b[i - 1] != b'#') {
                let start = i;
                while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                    i += 1;
                }
                out.push((start, i));
            }
            i += 1;
        }
        out
    };
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    for _ in 0..count / 2 {
        let mut text = SVG.to_string();
        let mut what = Vec::new();
        let mut picked: Vec<(usize, usize)> = (0..1 + rng.below(3)).map(|_| *rng.pick(&numbers)).collect();
        picked.sort_unstable();
        picked.dedup();
        for &(a, b) in picked.iter().rev() {
            let value = rng.pick(&EXTREMES);
            text.replace_range(a..b, value);
            what.push(format!("{a}: {value}"));
        }
        out.push(Mutant { bytes: text.into_bytes(), what: format!("numbers {}", what.join(", ")) });
    }
    for n in [10, 100, 1000] {
        let body = format!("{}<rect width=\"1\" height=\"1\"/>{}", "<g>".repeat(n), "</g>".repeat(n));
        out.push(Mutant {
            bytes: SVG.replace("<use", &format!("{body}<use")).into_bytes(),
            what: format!("{n} nested"),
        });
        let many = "<use xlink:href=\"#c\"/>".repeat(n);
        out.push(Mutant {
            bytes: SVG.replace("<text", &format!("{many}<text")).into_bytes(),
            what: format!("{n} uses"),
        });
    }
    let marks: Vec<usize> = SVG.bytes().enumerate().filter(|(_, b)| b"<>\"=/".contains(b)).map(|(i, _)| i).collect();
    let rest = count - out.len();
    out.extend(byte_mutants(SVG.as_bytes(), &marks, seed ^ 0x5a5a, rest));
    out
}

#[test]
fn svg_survives_mutation() {
    assert_eq!(rasterize_svg(SVG.as_bytes(), 64).unwrap().dimensions(), (64, 48), "the base SVG must render");
    check("SVG image", &svg_mutants(231, per_reader()), |bytes| rasterize_svg(bytes, 64).map(|i| i.dimensions()));
}

/// Regression (issue 26): usvg converts nested elements recursively, so a file nesting groups a
/// hundred thousand deep (1.2 MB) overflowed the stack and aborted the process; it is now refused.
#[test]
fn svg_nested_too_deep_is_an_error_not_a_stack_overflow() {
    let n = 100_000;
    let svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"4\" height=\"4\">{}<rect width=\"1\" height=\"1\"/>{}</svg>",
        "<g>".repeat(n),
        "</g>".repeat(n)
    );
    let err = format!("{:#}", rasterize_svg(svg.as_bytes(), 16).unwrap_err());
    assert!(err.contains("nested deeper than 128 levels"), "{err}");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, svg.as_bytes()).unwrap();
    let err = format!("{:#}", rasterize_svg(&gz.finish().unwrap(), 16).unwrap_err());
    assert!(err.contains("nested deeper than 128 levels"), "compressed (svgz): {err}");
    // At the limit it still renders, on a test thread's 2 MiB stack, with quoted `>` and `/>` and
    // comments in the way.
    let at_limit = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"4\" height=\"4\"><!-- <a> -->{}<rect id=\"a/>b\" width='1' height=\"1\"/>{}</svg>",
        "<g>".repeat(125),
        "</g>".repeat(125)
    );
    assert_eq!(rasterize_svg(at_limit.as_bytes(), 16).unwrap().dimensions(), (16, 16));
}

/// Regression (found by the mutation test): resvg / tiny-skia panicked on extreme coordinates (a rect
/// 3e38 wide or high: an `unwrap` in tiny-skia's rect code), and on a curve through y = -1e9 indexed
/// out of bounds, then panicked again unwinding, which aborted the process. Both are errors now.
#[test]
fn svg_with_extreme_coordinates_is_an_error_not_an_abort() {
    let cases = [
        SVG.replace("width=\"30\"", "width=\"3e38\""),
        SVG.replace("height=\"20\"", "height=\"3e38\""),
        SVG.replace("Q 20 0 5", "Q 20 -1e9 5").replace("x2=\"1\"", "x2=\"1e-30\""),
    ];
    for svg in cases {
        let err = format!("{:#}", rasterize_svg(svg.as_bytes(), 64).unwrap_err());
        assert!(err.contains("damaged coordinates") || err.contains("renderer failed"), "{err}");
    }
}
