//! Training scalars as a TensorBoard event file beside `metrics.jsonl`, so `tensorboard --logdir RUN`
//! draws every stage's curves.
//!
//! The file is TFRecord framing (u64 length, masked CRC-32C of the length, the data, masked CRC-32C of
//! the data) around `Event` protobufs: first one with `file_version`, then one per step with a
//! `Summary` of `simple_value` scalars. The few protobuf fields are written by hand. Like the JSONL
//! log, a resumed stage rewrites the file without the steps after its checkpoint, so the curves read
//! as one uninterrupted run.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// A fixed name (TensorBoard reads any file whose name contains `tfevents`), so a resumed stage finds it.
pub const EVENTS_FILE: &str = "events.out.tfevents.0.vlmix";
const FILE_VERSION: &str = "brain.Event:2";

/// One decoded event: what vlmix writes and reads back.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub wall_time: f64,
    pub step: i64,
    pub file_version: Option<String>,
    /// (tag, simple_value) of the event's summary.
    pub scalars: Vec<(String, f32)>,
}

pub struct EventWriter {
    path: PathBuf,
    file: File,
}

impl EventWriter {
    /// Opens `dir/EVENTS_FILE` for appending, keeping only the events of steps before `resume_step`.
    pub fn open(dir: &Path, resume_step: u64) -> Result<Self> {
        let path = dir.join(EVENTS_FILE);
        let kept: Vec<Event> = match path.exists() {
            true => read_events(&path)?
                .into_iter()
                .filter(|e| e.file_version.is_none() && (e.step as u64) < resume_step)
                .collect(),
            false => Vec::new(),
        };
        let mut bytes = Vec::new();
        let version = Event { wall_time: now(), step: 0, file_version: Some(FILE_VERSION.into()), scalars: Vec::new() };
        for event in std::iter::once(&version).chain(&kept) {
            frame(&encode_event(event), &mut bytes);
        }
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        let file =
            OpenOptions::new().append(true).open(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Self { path, file })
    }

    /// Appends one step's scalars as one record in a single write.
    pub fn scalars(&mut self, step: u64, scalars: &[(&str, f64)]) -> Result<()> {
        let event = Event {
            wall_time: now(),
            step: step as i64,
            file_version: None,
            scalars: scalars.iter().map(|(t, v)| (t.to_string(), *v as f32)).collect(),
        };
        let mut bytes = Vec::new();
        frame(&encode_event(&event), &mut bytes);
        self.file.write_all(&bytes).with_context(|| format!("writing {}", self.path.display()))
    }
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// TFRecord's CRC: CRC-32C rotated right by 15 bits plus a constant.
fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn frame(data: &[u8], out: &mut Vec<u8>) {
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn length_delimited(field: u64, bytes: &[u8], out: &mut Vec<u8>) {
    varint(field << 3 | 2, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// `Event { wall_time = 1 (double), step = 2 (int64), file_version = 3 | summary = 5 }`, where
/// `Summary { repeated Value value = 1 }` and `Value { tag = 1, simple_value = 2 (float) }`.
fn encode_event(event: &Event) -> Vec<u8> {
    let mut out = vec![1 << 3 | 1];
    out.extend_from_slice(&event.wall_time.to_le_bytes());
    varint(2 << 3, &mut out);
    varint(event.step as u64, &mut out);
    if let Some(version) = &event.file_version {
        length_delimited(3, version.as_bytes(), &mut out);
    }
    if !event.scalars.is_empty() {
        let mut summary = Vec::new();
        for (tag, value) in &event.scalars {
            let mut v = Vec::new();
            length_delimited(1, tag.as_bytes(), &mut v);
            v.push(2 << 3 | 5);
            v.extend_from_slice(&value.to_le_bytes());
            length_delimited(1, &v, &mut summary);
        }
        length_delimited(5, &summary, &mut out);
    }
    out
}

/// Reads every record, checking both CRCs; a torn last record (a kill mid-write) ends the file, any
/// other damage is an error naming the record's byte offset.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut events = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + 12) else { break };
        let len_bytes = &header[..8];
        if u32::from_le_bytes(header[8..12].try_into().expect("4 bytes")) != masked_crc(len_bytes) {
            bail!("{}: record at byte {at}: length CRC mismatch", path.display());
        }
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes")) as usize;
        let Some(data) = bytes.get(at + 12..at + 12 + len) else { break };
        let Some(crc) = bytes.get(at + 12 + len..at + 16 + len) else { break };
        if u32::from_le_bytes(crc.try_into().expect("4 bytes")) != masked_crc(data) {
            bail!("{}: record at byte {at}: data CRC mismatch", path.display());
        }
        events.push(decode_event(data).with_context(|| format!("{}: record at byte {at}", path.display()))?);
        at += 16 + len;
    }
    Ok(events)
}

/// Protobuf fields as (number, wire value) pairs; only the wire types events use.
fn fields(mut bytes: &[u8]) -> Result<Vec<(u64, Field<'_>)>> {
    fn read_varint(bytes: &mut &[u8]) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = bytes.split_first().context("varint runs past the end")?;
            *bytes = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        bail!("varint longer than 10 bytes")
    }
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let key = read_varint(&mut bytes)?;
        let field = match key & 7 {
            0 => Field::Varint(read_varint(&mut bytes)?),
            1 => {
                let (v, rest) = bytes.split_at_checked(8).context("fixed64 runs past the end")?;
                bytes = rest;
                Field::Fixed64(v.try_into().expect("8 bytes"))
            }
            2 => {
                let len = read_varint(&mut bytes)? as usize;
                let (v, rest) = bytes.split_at_checked(len).context("field runs past the end")?;
                bytes = rest;
                Field::Bytes(v)
            }
            5 => {
                let (v, rest) = bytes.split_at_checked(4).context("fixed32 runs past the end")?;
                bytes = rest;
                Field::Fixed32(v.try_into().expect("4 bytes"))
            }
            other => bail!("unsupported protobuf wire type {other}"),
        };
        out.push((key >> 3, field));
    }
    Ok(out)
}

enum Field<'a> {
    Varint(u64),
    Fixed64([u8; 8]),
    Fixed32([u8; 4]),
    Bytes(&'a [u8]),
}

fn decode_event(data: &[u8]) -> Result<Event> {
    let mut event = Event { wall_time: 0.0, step: 0, file_version: None, scalars: Vec::new() };
    for (number, field) in fields(data)? {
        match (number, field) {
            (1, Field::Fixed64(v)) => event.wall_time = f64::from_le_bytes(v),
            (2, Field::Varint(v)) => event.step = v as i64,
            (3, Field::Bytes(v)) => event.file_version = Some(String::from_utf8_lossy(v).into_owned()),
            (5, Field::Bytes(summary)) => {
                for (number, value) in fields(summary)? {
                    let (1, Field::Bytes(value)) = (number, value) else { continue };
                    let (mut tag, mut simple) = (None, None);
                    for (number, field) in fields(value)? {
                        match (number, field) {
                            (1, Field::Bytes(t)) => tag = Some(String::from_utf8_lossy(t).into_owned()),
                            (2, Field::Fixed32(v)) => simple = Some(f32::from_le_bytes(v)),
                            _ => {}
                        }
                    }
                    if let (Some(tag), Some(simple)) = (tag, simple) {
                        event.scalars.push((tag, simple));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_and_crcs_match_tensorflow() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283, "CRC-32C (Castagnoli) check value");
        let mut bytes = Vec::new();
        frame(b"", &mut bytes);
        assert_eq!(bytes.len(), 16);
        assert_eq!(&bytes[12..], &masked_crc(b"").to_le_bytes());
        assert_eq!(masked_crc(b""), 0xa282_ead8, "CRC of nothing is 0, masked to the constant");
    }

    #[test]
    fn scalars_read_back_and_a_resume_drops_later_steps() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = EventWriter::open(dir.path(), 0).unwrap();
        for step in 0..5u64 {
            writer.scalars(step, &[("train/loss", 5.0 - step as f64), ("train/lr", 1e-3)]).unwrap();
        }
        drop(writer);
        let path = dir.path().join(EVENTS_FILE);
        let events = read_events(&path).unwrap();
        assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
        assert_eq!(events.len(), 6);
        assert_eq!(events[3].step, 2);
        assert_eq!(events[3].scalars, vec![("train/loss".to_string(), 3.0), ("train/lr".to_string(), 1e-3)]);

        let mut torn = std::fs::read(&path).unwrap();
        let mut record = Vec::new();
        frame(
            &encode_event(&Event {
                wall_time: 1.0,
                step: 5,
                file_version: None,
                scalars: vec![("train/loss".into(), 0.1)],
            }),
            &mut record,
        );
        torn.extend_from_slice(&record[..20]);
        std::fs::write(&path, &torn).unwrap();
        assert_eq!(read_events(&path).unwrap().len(), 6, "a torn last record is ignored");

        let mut writer = EventWriter::open(dir.path(), 3).unwrap();
        writer.scalars(3, &[("train/loss", 0.5)]).unwrap();
        let steps: Vec<i64> = read_events(&path).unwrap().iter().skip(1).map(|e| e.step).collect();
        assert_eq!(steps, vec![0, 1, 2, 3]);

        let mut bad = std::fs::read(&path).unwrap();
        let last = bad.len() - 6;
        bad[last] ^= 0xff;
        std::fs::write(&path, &bad).unwrap();
        let err = read_events(&path).unwrap_err().to_string();
        assert!(err.contains("data CRC mismatch"), "{err}");
    }
}
