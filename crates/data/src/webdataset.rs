//! WebDataset tar shards: the image-caption format of DataComp, read and written here.
//!
//! A sample is a run of consecutive tar members sharing a key (the member path up to the first dot
//! of its file name): `k.png` + `k.txt` + `k.json`. Readers accept `.jpg`/`.jpeg`/`.png`/`.webp`
//! images and a `.txt` caption or a `.json` with a `"caption"` string, as other tools write them.
//! Every problem names the shard and the member; nothing is dropped without being reported.
use std::collections::HashSet;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use anyhow::{bail, Context, Result};
use image::RgbImage;
use serde_json::Value;

use crate::image_io;

/// Image extensions read, in order of preference when a sample has several.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp"];
/// Extensions that are images in formats the readers do not decode (reported, not ignored).
const OTHER_IMAGE_EXTENSIONS: &[&str] = &["gif", "bmp", "tif", "tiff", "ppm", "pgm", "avif", "heic", "svg"];

/// One image-caption pair read from a shard.
#[derive(Debug, Clone)]
pub struct WdsSample {
    pub key: String,
    pub image: RgbImage,
    pub caption: String,
    /// The sample's `.json` member, when it has one.
    pub metadata: Option<Value>,
}

/// A problem with one sample, or with the shard itself when `fatal` (reading stopped there).
#[derive(Debug, Clone, PartialEq)]
pub struct WdsProblem {
    pub shard: PathBuf,
    /// The member (or `key.*` for a whole sample) concerned.
    pub member: String,
    pub message: String,
    pub fatal: bool,
}

impl fmt::Display for WdsProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: member {}: {}", self.shard.display(), self.member, self.message)
    }
}

impl std::error::Error for WdsProblem {}

/// Counts of one pass over shards.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadCounts {
    pub samples: usize,
    pub problems: usize,
}

/// Splits a member path into (key, extension) by WebDataset's rule: the first dot of the file name.
pub fn split_member_name(name: &str) -> Option<(&str, &str)> {
    let file_start = name.rfind('/').map_or(0, |i| i + 1);
    let dot = name[file_start..].find('.')? + file_start;
    let (key, ext) = (&name[..dot], &name[dot + 1..]);
    (!key.is_empty() && !ext.is_empty()).then_some((key, ext))
}

/// Where a sample's caption is: DataComp writes it both as `key.txt` and as `"caption"` inside
/// `key.json`; other sets keep it only in one of them, under their own field name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CaptionKey {
    /// The `.txt` member, else `"caption"` in the `.json` member (what `vlmix data prepare` writes).
    #[default]
    Auto,
    /// The member with this extension (e.g. `txt`).
    Member(String),
    /// This string field of the `.json` member (e.g. `caption`, `TEXT`).
    JsonField(String),
}

impl CaptionKey {
    /// Parses `txt` (any member extension), `json:FIELD` or `auto`.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        if text == "auto" {
            return Ok(Self::Auto);
        }
        if let Some(field) = text.strip_prefix("json:") {
            if field.is_empty() {
                bail!("caption key {text:?}: name the field after `json:` (e.g. json:caption)");
            }
            return Ok(Self::JsonField(field.to_string()));
        }
        if text.is_empty() || text.contains(['.', '/', ':']) {
            bail!("caption key {text:?}: expected a member extension such as `txt`, `json:FIELD` or `auto`");
        }
        Ok(Self::Member(text.to_string()))
    }
}

/// Reads one shard, calling `visit` with each sample or problem in member order.
///
/// A broken tar structure (truncation, bad header) is delivered as a fatal problem and ends the
/// shard; an error returned by `visit` stops reading and is passed back.
pub fn read_shard(shard: &Path, visit: impl FnMut(Result<WdsSample, WdsProblem>) -> Result<()>) -> Result<ReadCounts> {
    read_shard_with(shard, &CaptionKey::Auto, visit)
}

/// [`read_shard`] taking the caption from where `caption` says.
pub fn read_shard_with(
    shard: &Path,
    caption: &CaptionKey,
    mut visit: impl FnMut(Result<WdsSample, WdsProblem>) -> Result<()>,
) -> Result<ReadCounts> {
    let mut counts = ReadCounts::default();
    let mut deliver = |item: Result<WdsSample, WdsProblem>, counts: &mut ReadCounts| {
        match &item {
            Ok(_) => counts.samples += 1,
            Err(_) => counts.problems += 1,
        }
        visit(item)
    };
    let problem = |member: &str, message: String, fatal: bool| WdsProblem {
        shard: shard.to_path_buf(),
        member: member.to_string(),
        message,
        fatal,
    };
    let file = match std::fs::File::open(shard) {
        Ok(file) => file,
        Err(err) => {
            deliver(Err(problem("-", format!("cannot open shard: {err}"), true)), &mut counts)?;
            return Ok(counts);
        }
    };
    let shard_len = file.metadata().map_or(0, |m| m.len());
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let entries = match archive.entries() {
        Ok(entries) => entries,
        Err(err) => {
            deliver(Err(problem("-", format!("not a tar archive: {err}"), true)), &mut counts)?;
            return Ok(counts);
        }
    };
    let mut pending = PendingSample::default();
    let mut finished_keys: HashSet<String> = HashSet::new();
    let mut last_member = String::from("(start of shard)");
    for entry in entries {
        let mut entry = match entry {
            Ok(entry) => entry,
            Err(err) => {
                if let Some(item) = pending.take(shard, caption) {
                    deliver(item, &mut counts)?;
                }
                let message = format!("broken tar structure after member {last_member}: {err}");
                deliver(Err(problem("-", message, true)), &mut counts)?;
                return Ok(counts);
            }
        };
        let name = match entry.path() {
            Ok(path) => path.to_string_lossy().into_owned(),
            Err(err) => {
                deliver(
                    Err(problem(&last_member, format!("member after this one has an unreadable name: {err}"), false)),
                    &mut counts,
                )?;
                continue;
            }
        };
        last_member = name.clone();
        let kind = entry.header().entry_type();
        if kind.is_dir() || kind.is_pax_global_extensions() {
            continue;
        }
        if !kind.is_file() {
            deliver(Err(problem(&name, format!("not a regular file ({kind:?})"), false)), &mut counts)?;
            continue;
        }
        let Some((key, ext)) = split_member_name(&name) else {
            deliver(Err(problem(&name, "member name has no key.extension form".into(), false)), &mut counts)?;
            continue;
        };
        let expected = entry.size();
        // The header's size is not trusted for the reservation: a member cannot outgrow its shard.
        let mut data = Vec::with_capacity(expected.min(shard_len) as usize);
        if let Err(err) = entry.read_to_end(&mut data) {
            deliver(Err(problem(&name, format!("cannot read member data: {err}"), true)), &mut counts)?;
            return Ok(counts);
        }
        if (data.len() as u64) < expected {
            if pending.key.as_deref() != Some(key) {
                if let Some(item) = pending.take(shard, caption) {
                    deliver(item, &mut counts)?;
                }
            }
            let message = format!(
                "truncated: header says {expected} bytes, the shard ends after {}{}",
                data.len(),
                pending.lost()
            );
            deliver(Err(problem(&name, message, true)), &mut counts)?;
            return Ok(counts);
        }
        if pending.key.as_deref() != Some(key) {
            if let Some(item) = pending.take(shard, caption) {
                deliver(item, &mut counts)?;
            }
            if !finished_keys.insert(key.to_string()) {
                let message =
                    format!("key {key} appears again after other samples (a sample's members must be consecutive)");
                deliver(Err(problem(&name, message, false)), &mut counts)?;
                continue;
            }
            pending.key = Some(key.to_string());
        }
        if pending.members.iter().any(|(e, _)| e == ext) {
            deliver(Err(problem(&name, format!("duplicate .{ext} member in sample {key}"), false)), &mut counts)?;
            continue;
        }
        pending.members.push((ext.to_string(), data));
    }
    if let Some(item) = pending.take(shard, caption) {
        deliver(item, &mut counts)?;
    }
    if let Some(message) = missing_end_blocks(shard) {
        deliver(
            Err(problem(
                "-",
                format!("{message} after member {last_member} (truncated: later samples are lost)"),
                true,
            )),
            &mut counts,
        )?;
    }
    Ok(counts)
}

/// A tar archive ends with two zero blocks; a shard cut exactly at a member boundary reads as
/// complete to the tar parser, so the end is checked separately.
fn missing_end_blocks(shard: &Path) -> Option<String> {
    use std::io::{Seek, SeekFrom};
    let mut file = std::fs::File::open(shard).ok()?;
    let len = file.metadata().ok()?.len();
    if len < 1024 {
        return Some(format!("shard is {len} bytes, shorter than the tar end-of-archive blocks"));
    }
    let mut tail = [0u8; 1024];
    file.seek(SeekFrom::Start(len - 1024)).ok()?;
    file.read_exact(&mut tail).ok()?;
    tail.iter().any(|&b| b != 0).then(|| "shard does not end with the tar end-of-archive blocks".to_string())
}

#[derive(Default)]
struct PendingSample {
    key: Option<String>,
    members: Vec<(String, Vec<u8>)>,
}

impl PendingSample {
    /// Names the sample a fatal error cuts short, for the error message.
    fn lost(&self) -> String {
        match &self.key {
            Some(key) => format!(" (sample {key} is incomplete and not used)"),
            None => String::new(),
        }
    }

    fn take(&mut self, shard: &Path, caption: &CaptionKey) -> Option<Result<WdsSample, WdsProblem>> {
        let key = self.key.take()?;
        let members = std::mem::take(&mut self.members);
        Some(assemble(shard, key, members, caption))
    }
}

fn assemble(
    shard: &Path,
    key: String,
    members: Vec<(String, Vec<u8>)>,
    caption_key: &CaptionKey,
) -> Result<WdsSample, WdsProblem> {
    let fail =
        |member: String, message: String| WdsProblem { shard: shard.to_path_buf(), member, message, fatal: false };
    let find = |ext: &str| members.iter().find(|(e, _)| e.eq_ignore_ascii_case(ext)).map(|(e, d)| (e.as_str(), d));
    let Some((image_ext, image_bytes)) = IMAGE_EXTENSIONS.iter().find_map(|ext| find(ext)) else {
        let present: Vec<&str> = members.iter().map(|(e, _)| e.as_str()).collect();
        if let Some(other) = present.iter().find(|e| OTHER_IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            return Err(fail(
                format!("{key}.{other}"),
                format!("unknown image format .{other} (supported: {})", IMAGE_EXTENSIONS.join(", ")),
            ));
        }
        return Err(fail(format!("{key}.*"), format!("sample has no image member (members: {})", present.join(", "))));
    };
    let image =
        image_io::decode_rgb(image_bytes).map_err(|err| fail(format!("{key}.{image_ext}"), format!("{err:#}")))?;
    let metadata = match find("json") {
        Some((ext, bytes)) => Some(
            serde_json::from_slice::<Value>(bytes)
                .map_err(|err| fail(format!("{key}.{ext}"), format!("bad JSON: {err}")))?,
        ),
        None => None,
    };
    let member_caption = |ext: &str| -> Result<Option<String>, WdsProblem> {
        let Some((ext, bytes)) = find(ext) else { return Ok(None) };
        let text = std::str::from_utf8(bytes)
            .map_err(|err| fail(format!("{key}.{ext}"), format!("caption is not UTF-8: {err}")))?;
        Ok(Some(text.trim().to_string()))
    };
    let json_caption = |field: &str| -> Result<Option<String>, WdsProblem> {
        match metadata.as_ref().and_then(|m| m.get(field)) {
            Some(Value::String(caption)) => Ok(Some(caption.trim().to_string())),
            Some(other) => Err(fail(format!("{key}.json"), format!("\"{field}\" is not a string: {other}"))),
            None => Ok(None),
        }
    };
    let found = match caption_key {
        CaptionKey::Auto => match member_caption("txt")? {
            Some(caption) => Some(caption),
            None => json_caption("caption")?,
        },
        CaptionKey::Member(ext) => member_caption(ext)?,
        CaptionKey::JsonField(field) => json_caption(field)?,
    };
    let Some(caption) = found else {
        let wanted = match caption_key {
            CaptionKey::Auto => "no .txt member and no \"caption\" in a .json member".to_string(),
            CaptionKey::Member(ext) => format!("no .{ext} member"),
            CaptionKey::JsonField(field) => format!("no \"{field}\" in a .json member"),
        };
        return Err(fail(format!("{key}.*"), format!("missing caption: {wanted}")));
    };
    if caption.is_empty() {
        return Err(fail(format!("{key}.txt"), "empty caption".into()));
    }
    Ok(WdsSample { key, image, caption, metadata })
}

/// Streams the samples of several shards in order, read on a background thread (prefetching
/// `buffer` samples). Ends after the last shard; a fatal problem ends only its shard.
pub fn stream(shards: Vec<PathBuf>, buffer: usize) -> impl Iterator<Item = Result<WdsSample, WdsProblem>> {
    let (sender, receiver) = mpsc::sync_channel(buffer.max(1));
    std::thread::spawn(move || {
        for shard in shards {
            let sent = read_shard(&shard, |item| sender.send(item).map_err(|_| anyhow::anyhow!("reader dropped")));
            if sent.is_err() {
                return;
            }
        }
    });
    receiver.into_iter()
}

/// The `*.tar` shards of a directory, sorted by name.
pub fn list_shards(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut shards = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing shards in {}", dir.display()))? {
        let path = entry.with_context(|| format!("listing shards in {}", dir.display()))?.path();
        if path.extension().is_some_and(|e| e == "tar") {
            shards.push(path);
        }
    }
    shards.sort();
    if shards.is_empty() {
        bail!("no .tar shards in {}", dir.display());
    }
    Ok(shards)
}

/// Builds one shard in memory with reproducible headers (mtime 0, uid/gid 0, mode 0644), so the
/// same samples always give byte-identical shards.
#[derive(Default)]
pub struct ShardBuilder {
    builder: Option<tar::Builder<Vec<u8>>>,
    keys: HashSet<String>,
}

impl ShardBuilder {
    pub fn new() -> Self {
        Self { builder: Some(tar::Builder::new(Vec::new())), keys: HashSet::new() }
    }

    /// Appends one sample: `members` are (extension, bytes), written as `key.extension`.
    pub fn add(&mut self, key: &str, members: &[(&str, &[u8])]) -> Result<()> {
        validate_key(key)?;
        if !self.keys.insert(key.to_string()) {
            bail!("sample key {key} is already in this shard");
        }
        let builder = self.builder.as_mut().context("shard already finished")?;
        for (ext, bytes) in members {
            let mut header = tar::Header::new_ustar();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            header.set_entry_type(tar::EntryType::Regular);
            builder
                .append_data(&mut header, format!("{key}.{ext}"), *bytes)
                .with_context(|| format!("adding {key}.{ext} to a shard"))?;
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The finished tar bytes.
    pub fn finish(mut self) -> Result<Vec<u8>> {
        self.builder.take().context("shard already finished")?.into_inner().context("finishing shard")
    }
}

/// Keys are ASCII letters, digits, `_` and `-` (no dots: the first dot ends the key), 1..=90 long
/// so that `key.json` fits a plain ustar name.
pub fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > 90 {
        bail!("sample key {key:?} must be 1 to 90 characters");
    }
    if let Some(bad) = key.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-')) {
        bail!("sample key {key:?} has character {bad:?}; only ASCII letters, digits, _ and - are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn png(color: [u8; 3]) -> Vec<u8> {
        image_io::encode_png(&RgbImage::from_pixel(4, 3, Rgb(color))).unwrap()
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn read_all(path: &Path) -> Vec<Result<WdsSample, WdsProblem>> {
        let mut items = Vec::new();
        read_shard(path, |item| {
            items.push(item);
            Ok(())
        })
        .unwrap();
        items
    }

    fn raw_tar(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, bytes) in members {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            builder.append_data(&mut header, name, *bytes).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn round_trip_keeps_image_caption_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let mut shard = ShardBuilder::new();
        let red = png([255, 0, 0]);
        shard.add("a_1", &[("png", &red), ("txt", b" a red box \n"), ("json", br#"{"source":"t"}"#)]).unwrap();
        shard.add("b_2", &[("png", &png([0, 0, 255])), ("txt", b"blue")]).unwrap();
        let bytes = shard.finish().unwrap();
        let path = write(dir.path(), "s.tar", &bytes);
        let items = read_all(&path);
        assert_eq!(items.len(), 2);
        let a = items[0].as_ref().unwrap();
        assert_eq!((a.key.as_str(), a.caption.as_str()), ("a_1", "a red box"));
        assert_eq!(a.image.get_pixel(0, 0), &Rgb([255, 0, 0]));
        assert_eq!(a.metadata.as_ref().unwrap()["source"], "t");
        assert!(items[1].as_ref().unwrap().metadata.is_none());
        let mut again = ShardBuilder::new();
        again.add("a_1", &[("png", &red), ("txt", b" a red box \n"), ("json", br#"{"source":"t"}"#)]).unwrap();
        again.add("b_2", &[("png", &png([0, 0, 255])), ("txt", b"blue")]).unwrap();
        assert_eq!(again.finish().unwrap(), bytes, "shards are byte-reproducible");
    }

    #[test]
    fn foreign_shards_with_jpg_webp_and_json_captions_read() {
        let dir = tempfile::tempdir().unwrap();
        let image = RgbImage::from_pixel(8, 8, Rgb([10, 200, 30]));
        let mut jpg = std::io::Cursor::new(Vec::new());
        image.write_to(&mut jpg, image::ImageFormat::Jpeg).unwrap();
        let mut webp = std::io::Cursor::new(Vec::new());
        image.write_to(&mut webp, image::ImageFormat::WebP).unwrap();
        let tar = raw_tar(&[
            ("part/000001.jpg", jpg.get_ref()),
            ("part/000001.json", br#"{"caption":"green from json","uid":"x"}"#),
            ("part/000002.webp", webp.get_ref()),
            ("part/000002.txt", b"green webp"),
        ]);
        let path = write(dir.path(), "foreign.tar", &tar);
        let items = read_all(&path);
        let samples: Vec<&WdsSample> = items.iter().map(|i| i.as_ref().unwrap()).collect();
        assert_eq!(samples[0].key, "part/000001");
        assert_eq!(samples[0].caption, "green from json");
        assert_eq!(samples[1].caption, "green webp");
        assert_eq!(samples[1].image.get_pixel(3, 3), &Rgb([10, 200, 30]));
        let jpeg_pixel = samples[0].image.get_pixel(3, 3);
        assert!((i32::from(jpeg_pixel[1]) - 200).abs() < 10, "{jpeg_pixel:?}");
    }

    #[test]
    fn malformed_samples_are_named_problems_and_reading_continues() {
        let dir = tempfile::tempdir().unwrap();
        let good = png([1, 2, 3]);
        let mut corrupt = good.clone();
        corrupt.truncate(good.len() - 20);
        let tar = raw_tar(&[
            ("nocap.png", &good),
            ("badpng.png", &corrupt),
            ("badpng.txt", b"x"),
            ("tiff.tiff", b"II*\0"),
            ("tiff.txt", b"x"),
            ("junk.png", b"not an image at all"),
            ("junk.txt", b"x"),
            ("badjson.png", &good),
            ("badjson.json", b"{\"caption\": "),
            ("empty.png", &good),
            ("empty.txt", b"   "),
            ("ok.png", &good),
            ("ok.txt", b"fine"),
        ]);
        let path = write(dir.path(), "bad.tar", &tar);
        let items = read_all(&path);
        let problems: Vec<String> = items.iter().filter_map(|i| i.as_ref().err()).map(|p| p.to_string()).collect();
        let expect = [
            "member nocap.*: missing caption",
            "member badpng.png: corrupt Png image",
            "member tiff.tiff: unknown image format .tiff",
            "member junk.png: unknown image format",
            "member badjson.json: bad JSON",
            "member empty.txt: empty caption",
        ];
        assert_eq!(problems.len(), expect.len(), "{problems:#?}");
        for (problem, want) in problems.iter().zip(expect) {
            assert!(problem.contains(want) && problem.contains("bad.tar"), "{problem} should contain {want}");
        }
        assert_eq!(items.last().unwrap().as_ref().unwrap().caption, "fine");
    }

    #[test]
    fn truncated_shard_is_a_fatal_problem_naming_the_member() {
        let dir = tempfile::tempdir().unwrap();
        let mut shard = ShardBuilder::new();
        let big = image_io::encode_png(&RgbImage::from_fn(64, 64, |x, y| Rgb([x as u8 * 4, y as u8 * 4, 0]))).unwrap();
        shard.add("first", &[("png", &big), ("txt", b"one")]).unwrap();
        shard.add("second", &[("png", &big), ("txt", b"two")]).unwrap();
        let bytes = shard.finish().unwrap();
        let second_header = bytes.windows(10).position(|w| w == b"second.png").expect("member name in its header");
        let cut_in_data = write(dir.path(), "cut.tar", &bytes[..second_header + 512 + 100]);
        let items = read_all(&cut_in_data);
        assert!(items[0].is_ok());
        let last = items.last().unwrap().as_ref().unwrap_err();
        assert!(last.fatal && last.member == "second.png" && last.message.contains("truncated"), "{last}");
        let cut_in_header = write(dir.path(), "cut2.tar", &bytes[..second_header + 200]);
        let items = read_all(&cut_in_header);
        assert_eq!(items.len(), 2, "first sample, then the fatal problem");
        let problem = items[1].as_ref().unwrap_err();
        assert!(problem.fatal, "{problem}");
        assert!(
            problem.to_string().contains("cut2.tar") && problem.message.contains("after member first.txt"),
            "{problem}"
        );
        let not_tar = write(dir.path(), "text.tar", &[b'x'; 1500]);
        let items = read_all(&not_tar);
        assert!(items.iter().all(|i| i.is_err()) && !items.is_empty());
    }

    #[test]
    fn non_consecutive_and_duplicate_members_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let good = png([5, 5, 5]);
        let tar = raw_tar(&[
            ("a.png", &good),
            ("a.txt", b"a"),
            ("a.txt", b"again"),
            ("b.png", &good),
            ("b.txt", b"b"),
            ("a.json", b"{}"),
        ]);
        let path = write(dir.path(), "order.tar", &tar);
        let problems: Vec<String> = read_all(&path).into_iter().filter_map(|i| i.err()).map(|p| p.message).collect();
        assert!(problems[0].contains("duplicate .txt"), "{problems:?}");
        assert!(problems[1].contains("appears again"), "{problems:?}");
    }

    #[test]
    fn keys_are_validated() {
        assert!(validate_key("emoji_1f600-1f3fb").is_ok());
        assert!(validate_key("a.b").is_err());
        assert!(validate_key("a/b").is_err());
        assert!(validate_key("").is_err());
        assert!(split_member_name("dir.x/k.seg.png") == Some(("dir.x/k", "seg.png")));
    }

    #[test]
    fn stream_reads_shards_in_order() {
        let dir = tempfile::tempdir().unwrap();
        for (i, name) in ["s0.tar", "s1.tar"].iter().enumerate() {
            let mut shard = ShardBuilder::new();
            shard.add(&format!("k{i}"), &[("png", &png([0, 0, 0])), ("txt", b"c")]).unwrap();
            write(dir.path(), name, &shard.finish().unwrap());
        }
        let keys: Vec<String> = stream(list_shards(dir.path()).unwrap(), 4).map(|s| s.unwrap().key).collect();
        assert_eq!(keys, ["k0", "k1"]);
    }
}
