//! The zip container of `torch.save` (PyTorch >= 1.6): a plain zip archive whose entries are stored
//! uncompressed (PyTorch's writer never compresses), with zip64 records once it passes 4 GiB.
//! Only what such archives use is read: the end-of-central-directory record (and its zip64 twin),
//! the central directory, and local headers to find each entry's data.

use super::pickle;
use super::{gather_all, tensor_refs, RawTensor};
use anyhow::{bail, ensure, Context, Result};
use std::collections::HashMap;

/// Every zip file starts with a local file header.
pub(super) const LOCAL_HEADER: &[u8] = b"PK\x03\x04";
const CENTRAL_HEADER: u32 = 0x0201_4b50;
const END_OF_CENTRAL_DIR: u32 = 0x0605_4b50;
const ZIP64_END_OF_CENTRAL_DIR: u32 = 0x0606_4b50;
const ZIP64_LOCATOR: u32 = 0x0706_4b50;
const ZIP64_EXTRA: u16 = 0x0001;

fn u16_at(b: &[u8], at: usize) -> Result<u16> {
    let raw = b.get(at..at.saturating_add(2)).with_context(|| format!("truncated zip: needs 2 bytes at {at}"))?;
    Ok(u16::from_le_bytes(raw.try_into().unwrap()))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32> {
    let raw = b.get(at..at.saturating_add(4)).with_context(|| format!("truncated zip: needs 4 bytes at {at}"))?;
    Ok(u32::from_le_bytes(raw.try_into().unwrap()))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64> {
    let raw = b.get(at..at.saturating_add(8)).with_context(|| format!("truncated zip: needs 8 bytes at {at}"))?;
    Ok(u64::from_le_bytes(raw.try_into().unwrap()))
}

fn usize_of(v: u64) -> Result<usize> {
    usize::try_from(v).context("zip offset does not fit this machine")
}

/// Entry name -> its stored bytes.
fn entries(b: &[u8]) -> Result<HashMap<String, &[u8]>> {
    // The end record is the last 22 bytes plus a comment of at most 64 KiB.
    let lowest = b.len().saturating_sub(22 + 0xffff);
    let end = (lowest..=b.len().saturating_sub(22))
        .rev()
        .find(|&i| u32_at(b, i).is_ok_and(|s| s == END_OF_CENTRAL_DIR))
        .context("no end-of-central-directory record (not a zip file, or truncated)")?;
    let mut count = u16_at(b, end + 10)? as u64;
    let mut dir = u32_at(b, end + 16)? as u64;
    if (count == 0xffff || dir == 0xffff_ffff) && end >= 20 && u32_at(b, end - 20)? == ZIP64_LOCATOR {
        let record = usize_of(u64_at(b, end - 20 + 8)?)?;
        ensure!(u32_at(b, record)? == ZIP64_END_OF_CENTRAL_DIR, "zip64 locator points at no zip64 end record");
        count = u64_at(b, record + 32)?;
        dir = u64_at(b, record + 48)?;
    }
    let mut out = HashMap::new();
    let mut at = usize_of(dir)?;
    for _ in 0..count {
        ensure!(u32_at(b, at)? == CENTRAL_HEADER, "central directory entry at {at} has a bad signature");
        let method = u16_at(b, at + 10)?;
        let mut size = u32_at(b, at + 20)? as u64;
        let (name_len, extra_len, comment_len) =
            (u16_at(b, at + 28)? as usize, u16_at(b, at + 30)? as usize, u16_at(b, at + 32)? as usize);
        let mut local = u32_at(b, at + 42)? as u64;
        let name_bytes = b.get(at + 46..at + 46 + name_len).context("truncated central directory")?;
        let name = String::from_utf8_lossy(name_bytes).into_owned();
        // Zip64 extra field: 64-bit values for the fields saturated above, in a fixed order.
        let extra = b.get(at + 46 + name_len..at + 46 + name_len + extra_len).context("truncated central directory")?;
        let mut e = 0;
        while e + 4 <= extra.len() {
            let (id, len) = (u16_at(extra, e)?, u16_at(extra, e + 2)? as usize);
            if id == ZIP64_EXTRA {
                let mut field = e + 4;
                let uncompressed = u32_at(b, at + 24)? == 0xffff_ffff;
                if uncompressed {
                    field += 8;
                }
                if size == 0xffff_ffff {
                    size = u64_at(extra, field)?;
                    field += 8;
                }
                if local == 0xffff_ffff {
                    local = u64_at(extra, field)?;
                }
            }
            e += 4 + len;
        }
        ensure!(method == 0, "zip entry {name} is compressed (method {method}); PyTorch writes them stored");
        let local = usize_of(local)?;
        ensure!(
            b.get(local..local.saturating_add(4)) == Some(LOCAL_HEADER),
            "zip entry {name}: bad local header at {local}"
        );
        let data = local + 30 + u16_at(b, local + 26)? as usize + u16_at(b, local + 28)? as usize;
        let end = data.checked_add(usize_of(size)?);
        let bytes = end.and_then(|end| b.get(data..end)).with_context(|| format!("zip entry {name} is truncated"))?;
        out.insert(name, bytes);
        at += 46 + name_len + extra_len + comment_len;
    }
    Ok(out)
}

pub(super) fn parse(b: &[u8]) -> Result<Vec<(String, RawTensor)>> {
    let entries = entries(b)?;
    // The archive's folder is named after the file it was first saved as: find it by its pickle.
    let pkl = entries
        .keys()
        .find(|n| n.ends_with("/data.pkl") || *n == "data.pkl")
        .context("no data.pkl in the archive")?
        .clone();
    let prefix = &pkl[..pkl.len() - "data.pkl".len()];
    if let Some(order) = entries.get(&format!("{prefix}byteorder")) {
        if *order != b"little" {
            bail!("checkpoint was written {}-endian; not supported", String::from_utf8_lossy(order));
        }
    }
    let mut pos = 0;
    let object = pickle::read(entries[&pkl], &mut pos).with_context(|| format!("reading {pkl}"))?;
    let refs = tensor_refs(object)?;
    gather_all(refs, |key| entries.get(&format!("{prefix}data/{key}")).copied())
}
