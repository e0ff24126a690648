//! Image decoding, normalisation and rasterisation shared by every image reader and writer.
//!
//! Everything that enters training is 8-bit RGB: transparency is composited over white because
//! the clip art, emoji and flags are drawn for a white page, and a black fill (what dropping alpha
//! gives) would turn line art into black squares.
use anyhow::{bail, Context, Result};
use image::codecs::png::{CompressionType, FilterType as PngFilter, PngEncoder};
use image::imageops::FilterType;
use image::{DynamicImage, ImageEncoder, ImageFormat, Rgb, RgbImage};
use resvg::{tiny_skia, usvg};

/// Image container formats accepted inside shards, LLaVA folders and eval sets.
pub const SUPPORTED_FORMATS: &[&str] = &["png", "jpeg", "webp"];

/// The container format of `bytes` by content, or an error naming what was found instead.
pub fn sniff_format(bytes: &[u8]) -> Result<ImageFormat> {
    match image::guess_format(bytes) {
        Ok(format @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP)) => Ok(format),
        Ok(other) => bail!("unsupported image format {other:?} (supported: {})", SUPPORTED_FORMATS.join(", ")),
        Err(_) => {
            let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
            bail!(
                "unknown image format (first bytes {}; supported: {})",
                if head.is_empty() { "none: empty file".to_string() } else { head.join(" ") },
                SUPPORTED_FORMATS.join(", ")
            )
        }
    }
}

/// Widest and tallest image decoded: a header declaring more is refused before any pixel buffer is
/// allocated (a few damaged bytes can declare four billion pixels).
pub const MAX_DECODED_SIDE: u32 = 16_384;
/// Largest decoded pixel buffer (8-bit RGB of about 9,400 x 9,400 pixels), checked the same way.
pub const MAX_DECODED_BYTES: u64 = 256 << 20;

/// Decodes PNG / JPEG / WebP bytes into RGB, compositing any alpha over white. Sizes over
/// [`MAX_DECODED_SIDE`] or [`MAX_DECODED_BYTES`] are errors.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage> {
    let format = sniff_format(bytes)?;
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_DECODED_SIDE);
    limits.max_image_height = Some(MAX_DECODED_SIDE);
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    reader.limits(limits);
    let image = reader.decode().map_err(|err| match err {
        image::ImageError::Limits(_) => anyhow::anyhow!(
            "{format:?} image declares a size over vlmix's limits ({MAX_DECODED_SIDE} pixels a side, \
             {} MiB decoded): {err}",
            MAX_DECODED_BYTES >> 20
        ),
        other => anyhow::Error::new(other).context(format!("corrupt {format:?} image")),
    })?;
    Ok(flatten_on_white(image))
}

/// RGB copy of `image` with transparency composited over white.
pub fn flatten_on_white(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.into_rgb8();
    }
    let rgba = image.into_rgba8();
    let (width, height) = rgba.dimensions();
    let mut out = RgbImage::new(width, height);
    for (dst, src) in out.pixels_mut().zip(rgba.pixels()) {
        let alpha = u32::from(src[3]);
        let blend = |c: u8| ((u32::from(c) * alpha + 255 * (255 - alpha) + 127) / 255) as u8;
        *dst = Rgb([blend(src[0]), blend(src[1]), blend(src[2])]);
    }
    out
}

/// Shrinks `image` so that its longer side is at most `max_side`, keeping the aspect ratio; never
/// enlarges (a 32-pixel CIFAR image stays 32 pixels: upscaling adds bytes, not information).
pub fn fit_within(image: RgbImage, max_side: u32) -> RgbImage {
    let (width, height) = image.dimensions();
    if width.max(height) <= max_side {
        return image;
    }
    let (new_width, new_height) = scaled_dims(width, height, max_side);
    image::imageops::resize(&image, new_width, new_height, FilterType::Triangle)
}

/// Square `size`x`size` encoder input: scaled so the longer side is `size`, centred on white.
///
/// Letterboxing keeps every pixel of a flag or clip-art drawing and its proportions, which centre
/// cropping (cuts flag edges) and squashing (distorts shapes) do not.
pub fn letterbox(image: &RgbImage, size: u32) -> RgbImage {
    let (width, height) = image.dimensions();
    let (new_width, new_height) = scaled_dims(width, height, size);
    let filter = if width.max(height) < size { FilterType::CatmullRom } else { FilterType::Triangle };
    let scaled = if (new_width, new_height) == (width, height) {
        image.clone()
    } else {
        image::imageops::resize(image, new_width, new_height, filter)
    };
    let mut canvas = RgbImage::from_pixel(size, size, Rgb([255, 255, 255]));
    image::imageops::overlay(
        &mut canvas,
        &scaled,
        i64::from((size - new_width) / 2),
        i64::from((size - new_height) / 2),
    );
    canvas
}

fn scaled_dims(width: u32, height: u32, max_side: u32) -> (u32, u32) {
    let longer = width.max(height).max(1) as f64;
    let scale = f64::from(max_side) / longer;
    let side = |v: u32| ((f64::from(v) * scale).round() as u32).clamp(1, max_side);
    (side(width), side(height))
}

/// Rasterises SVG bytes so that the longer side is exactly `max_side` pixels, over white.
///
/// Text elements render only with fonts, which are not loaded: the sources draw their glyphs as
/// paths, and loading system fonts would make output depend on the machine.
pub fn rasterize_svg(svg: &[u8], max_side: u32) -> Result<RgbImage> {
    let unpacked;
    let svg = if svg.starts_with(&[0x1f, 0x8b]) {
        unpacked = usvg::decompress_svgz(svg).context("malformed compressed SVG")?;
        &unpacked[..]
    } else {
        svg
    };
    let depth = element_depth(svg);
    if depth > MAX_SVG_DEPTH {
        bail!("SVG elements nested deeper than {MAX_SVG_DEPTH} levels (at least {depth})");
    }
    // resvg and tiny-skia panic on some extreme coordinates (issue 26): a panic left is an error.
    std::panic::catch_unwind(|| {
        let tree = usvg::Tree::from_data(svg, &usvg::Options::default()).context("malformed SVG")?;
        render_tree(&tree, max_side)
    })
    .unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        bail!("the SVG renderer failed on this file: {message}")
    })
}

/// Farthest from the canvas, in output pixels, that an SVG's content (strokes and filter regions
/// included) may reach: tiny-skia indexes out of bounds on coordinates near a billion and then
/// aborts the process unwinding, which no `catch_unwind` stops; drawings stay near their canvas.
const MAX_SVG_REACH: f32 = 100_000.0;

/// Deepest element nesting rasterised: usvg converts nested elements recursively, so a file
/// nesting groups a hundred thousand deep overflowed the stack (drawings nest a few dozen deep).
const MAX_SVG_DEPTH: usize = 128;

/// How deep the elements of XML text nest, counted without parsing: each `<name` opens an element
/// (until `/>`), each `</` closes one. Tags inside comments count too, so it never undercounts.
fn element_depth(xml: &[u8]) -> usize {
    let (mut depth, mut deepest, mut i) = (0usize, 0usize, 0usize);
    while let Some(offset) = xml[i..].iter().position(|&b| b == b'<') {
        i += offset + 1;
        match xml.get(i) {
            Some(b'/') => depth = depth.saturating_sub(1),
            Some(b'!' | b'?') | None => {}
            Some(_) => {
                depth += 1;
                deepest = deepest.max(depth);
                // The tag's end outside quoted attribute values; `/>` closes the element again.
                let mut quote = None;
                while let Some(&b) = xml.get(i) {
                    match (quote, b) {
                        (Some(q), b) if b == q => quote = None,
                        (None, b'"' | b'\'') => quote = Some(b),
                        (None, b'>') => {
                            if xml[i - 1] == b'/' {
                                depth -= 1;
                            }
                            break;
                        }
                        _ => {}
                    }
                    i += 1;
                }
            }
        }
    }
    deepest
}

fn render_tree(tree: &usvg::Tree, max_side: u32) -> Result<RgbImage> {
    let size = tree.size();
    if !(size.width() > 0.0 && size.height() > 0.0) {
        bail!("SVG has an empty canvas ({}x{})", size.width(), size.height());
    }
    let scale = max_side as f32 / size.width().max(size.height());
    let width = ((size.width() * scale).round() as u32).clamp(1, max_side);
    let height = ((size.height() * scale).round() as u32).clamp(1, max_side);
    let content = tree.root().abs_layer_bounding_box();
    let corners = [content.left(), content.top(), content.right(), content.bottom()].map(|v| (v * scale).abs());
    if corners.iter().any(|v| v.is_nan() || *v > MAX_SVG_REACH) {
        bail!(
            "SVG content reaches {} pixels from the canvas (more than {MAX_SVG_REACH}): damaged coordinates",
            corners.iter().fold(0.0f32, |a, &v| a.max(v))
        );
    }
    let mut pixmap = tiny_skia::Pixmap::new(width, height).context("allocating the SVG canvas")?;
    resvg::render(tree, tiny_skia::Transform::from_scale(scale, scale), &mut pixmap.as_mut());
    Ok(premultiplied_on_white(pixmap.data(), width, height))
}

/// Composites premultiplied RGBA (tiny-skia's layout) over white: c + (255 - alpha).
fn premultiplied_on_white(data: &[u8], width: u32, height: u32) -> RgbImage {
    let mut out = RgbImage::new(width, height);
    for (dst, src) in out.pixels_mut().zip(data.chunks_exact(4)) {
        let lift = 255 - src[3];
        *dst = Rgb([src[0].saturating_add(lift), src[1].saturating_add(lift), src[2].saturating_add(lift)]);
    }
    out
}

/// Draws SVG path data as a black stroke on white in a square `size` image, framed to the path's
/// own bounds plus a margin: bigbench's geometric_shapes paths lie anywhere in a 100-unit box and
/// the shape, not its position, is what is asked about.
pub fn rasterize_path(d: &str, size: u32) -> Result<RgbImage> {
    if d.contains(['"', '<', '>', '&']) {
        bail!("path data {d:?} contains markup characters");
    }
    let probe = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100" viewBox="0 0 100 100"><path d="{d}" fill="none" stroke="black" stroke-width="0.01"/></svg>"#
    );
    let tree = usvg::Tree::from_data(probe.as_bytes(), &usvg::Options::default()).context("malformed SVG path")?;
    let bounds = tree.root().abs_stroke_bounding_box();
    let extent = bounds.width().max(bounds.height());
    if extent.is_nan() || extent <= 0.0 {
        bail!("path {d:?} draws nothing");
    }
    let stroke = extent * 0.03;
    let side = extent * 1.2 + stroke;
    let (cx, cy) = (bounds.x() + bounds.width() / 2.0, bounds.y() + bounds.height() / 2.0);
    let svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" viewBox="{} {} {side} {side}"><path d="{d}" fill="none" stroke="black" stroke-width="{stroke}" stroke-linejoin="round" stroke-linecap="round"/></svg>"#,
        cx - side / 2.0,
        cy - side / 2.0
    );
    rasterize_svg(svg.as_bytes(), size)
}

/// Lossless PNG bytes of an RGB image.
pub fn encode_png(image: &RgbImage) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    PngEncoder::new_with_quality(&mut bytes, CompressionType::Default, PngFilter::Adaptive)
        .write_image(image.as_raw(), image.width(), image.height(), image::ExtendedColorType::Rgb8)
        .context("encoding PNG")?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgba, RgbaImage};

    fn png_of(image: DynamicImage) -> Vec<u8> {
        let mut bytes = std::io::Cursor::new(Vec::new());
        image.write_to(&mut bytes, ImageFormat::Png).unwrap();
        bytes.into_inner()
    }

    #[test]
    fn transparent_pixels_become_white_and_half_alpha_blends() {
        let mut rgba = RgbaImage::new(2, 1);
        rgba.put_pixel(0, 0, Rgba([0, 0, 0, 0]));
        rgba.put_pixel(1, 0, Rgba([0, 0, 0, 128]));
        let rgb = decode_rgb(&png_of(DynamicImage::ImageRgba8(rgba))).unwrap();
        assert_eq!(rgb.get_pixel(0, 0), &Rgb([255, 255, 255]));
        assert_eq!(rgb.get_pixel(1, 0), &Rgb([127, 127, 127]));
    }

    #[test]
    fn unknown_and_corrupt_bytes_are_errors_not_panics() {
        let err = decode_rgb(b"GIF89a-not-really").unwrap_err().to_string();
        assert!(err.contains("unsupported image format Gif"), "{err}");
        let err = decode_rgb(b"hello world").unwrap_err().to_string();
        assert!(err.contains("unknown image format"), "{err}");
        let mut png = png_of(DynamicImage::ImageRgb8(RgbImage::from_pixel(16, 16, Rgb([9, 9, 9]))));
        png.truncate(png.len() / 2);
        let err = format!("{:#}", decode_rgb(&png).unwrap_err());
        assert!(err.contains("corrupt Png image"), "{err}");
    }

    #[test]
    fn fit_within_only_shrinks_and_keeps_aspect() {
        let small = RgbImage::new(32, 32);
        assert_eq!(fit_within(small, 224).dimensions(), (32, 32));
        let wide = RgbImage::new(1000, 500);
        assert_eq!(fit_within(wide, 224).dimensions(), (224, 112));
    }

    #[test]
    fn letterbox_pads_with_white_and_centres() {
        let red = RgbImage::from_pixel(40, 20, Rgb([255, 0, 0]));
        let boxed = letterbox(&red, 8);
        assert_eq!(boxed.dimensions(), (8, 8));
        assert_eq!(boxed.get_pixel(4, 0), &Rgb([255, 255, 255]));
        assert_eq!(boxed.get_pixel(4, 4), &Rgb([255, 0, 0]));
        assert_eq!(boxed.get_pixel(4, 7), &Rgb([255, 255, 255]));
    }

    #[test]
    fn svg_is_rasterised_at_the_requested_longer_side_over_white() {
        let svg = br##"<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20"><rect x="0" y="0" width="20" height="20" fill="#0000ff"/></svg>"##;
        let image = rasterize_svg(svg, 64).unwrap();
        assert_eq!(image.dimensions(), (64, 32));
        assert_eq!(image.get_pixel(10, 16), &Rgb([0, 0, 255]));
        assert_eq!(image.get_pixel(50, 16), &Rgb([255, 255, 255]));
        assert!(rasterize_svg(b"<svg", 64).is_err());
    }

    #[test]
    fn path_is_framed_and_stroked_wherever_it_lies() {
        let image = rasterize_path("M 80,90 L 95,90", 100).unwrap();
        assert_eq!(image.dimensions(), (100, 100));
        assert!(image.get_pixel(50, 50)[0] < 128, "the line crosses the centre");
        assert_eq!(image.get_pixel(50, 10), &Rgb([255, 255, 255]));
        let dark = image.pixels().filter(|p| p[0] < 128).count();
        assert!((100..2000).contains(&dark), "{dark} dark pixels");
        assert!(rasterize_path("M 1,1\" onload=\"x", 10).is_err());
    }

    #[test]
    fn png_round_trip_is_lossless() {
        let mut image = RgbImage::new(5, 3);
        for (i, p) in image.pixels_mut().enumerate() {
            *p = Rgb([i as u8 * 10, 255 - i as u8, 7]);
        }
        assert_eq!(decode_rgb(&encode_png(&image).unwrap()).unwrap(), image);
    }
}
