//! A seeded, resumable stream over many WebDataset shards with a shuffle buffer, in memory that does
//! not grow with the number of shards: one shard is read at a time on a background thread (a few
//! samples ahead), and only the shuffle buffer's samples are held.
//!
//! Order: each epoch visits the shards in a seeded permutation; samples enter a buffer of
//! `shuffle_buffer` and leave it at seeded positions (WebDataset's `shuffle(n)`). The cursor names
//! where reading stands (shards finished, items read of the next one) and which samples wait in the
//! buffer by (shard, item index), so a restored stream re-reads only those and continues with the
//! exact sequence an uninterrupted one yields.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::{OnBadRecord, Skipped};
use crate::packing::epoch_order;
use crate::webdataset::{read_shard_with, CaptionKey, WdsProblem, WdsSample};

/// Samples decoded ahead of the consumer by the reading thread.
const READ_AHEAD: usize = 16;

#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Seeds the shard order and the buffer's picks; `None` reads the shards as given, each in file
    /// order (how the prepared registry data has always been read, so its studies stay identical).
    pub seed: Option<u64>,
    /// Samples held for shuffling (with a seed); 1 keeps file order within the shard order.
    pub shuffle_buffer: usize,
    pub caption: CaptionKey,
    pub on_bad_record: OnBadRecord,
}

/// Where a stream stands; serialisable so a long read can be resumed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamCursor {
    pub epoch: u64,
    /// Shards at the front of the epoch's order that have been read completely.
    pub shards_done: usize,
    /// Items (samples and problems) of the next shard already read.
    pub items_read: u64,
    /// Samples waiting in the shuffle buffer, in buffer order: (position in the epoch's shard order,
    /// item index in that shard).
    pub buffer: Vec<(usize, u64)>,
    /// Samples handed out this epoch; with the seed it decides the next pick from the buffer.
    pub emitted: u64,
    /// Bad records left out so far.
    pub skipped: Skipped,
}

type Slot = ((usize, u64), WdsSample);
type Read = (usize, u64, Result<WdsSample, WdsProblem>);

/// One epoch over `shards`: yields samples until every shard is read and the buffer is empty.
pub struct ShardStream {
    config: StreamConfig,
    cursor: StreamCursor,
    buffer: Vec<Slot>,
    reader: Option<Receiver<Read>>,
    order_len: usize,
}

impl ShardStream {
    /// Starts (or, with a saved cursor, resumes) the epoch `cursor.epoch`.
    pub fn new(shards: Vec<PathBuf>, config: StreamConfig, cursor: StreamCursor) -> Result<Self> {
        if shards.is_empty() {
            bail!("no shards to read");
        }
        if config.shuffle_buffer == 0 {
            bail!("shuffle_buffer must be at least 1");
        }
        let order: Vec<PathBuf> = match config.seed {
            Some(seed) => {
                epoch_order(shards.len(), seed, cursor.epoch).into_iter().map(|i| shards[i as usize].clone()).collect()
            }
            None => shards,
        };
        if cursor.shards_done > order.len() || cursor.buffer.iter().any(|&(pos, _)| pos >= order.len()) {
            bail!("stream cursor names shard {} of {}: it belongs to other data", cursor.shards_done, order.len());
        }
        let buffer = refill_buffer(&order, &config.caption, &cursor.buffer)?;
        let reader = spawn_reader(
            order[cursor.shards_done.min(order.len())..].to_vec(),
            cursor.shards_done,
            cursor.items_read,
            config.caption.clone(),
        );
        Ok(Self { order_len: order.len(), config, cursor, buffer, reader: Some(reader) })
    }

    /// The state to resume from: the next sample of a stream restored from it is the next one here.
    pub fn cursor(&self) -> StreamCursor {
        StreamCursor { buffer: self.buffer.iter().map(|(at, _)| *at).collect(), ..self.cursor.clone() }
    }

    pub fn skipped(&self) -> &Skipped {
        &self.cursor.skipped
    }

    /// Reads until the buffer is full or the shards are exhausted.
    fn fill(&mut self) -> Result<()> {
        let capacity = if self.config.seed.is_some() { self.config.shuffle_buffer } else { 1 };
        while self.buffer.len() < capacity {
            let Some(reader) = &self.reader else { return Ok(()) };
            let Ok((pos, index, item)) = reader.recv() else {
                self.reader = None;
                self.cursor.shards_done = self.order_len;
                self.cursor.items_read = 0;
                return Ok(());
            };
            self.cursor.shards_done = pos;
            self.cursor.items_read = index + 1;
            match item {
                Ok(sample) => self.buffer.push(((pos, index), sample)),
                Err(problem) => {
                    self.cursor.skipped.record(self.config.on_bad_record, "image-caption shards", &problem)?
                }
            }
        }
        Ok(())
    }
}

impl Iterator for ShardStream {
    type Item = Result<WdsSample>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Err(err) = self.fill() {
            self.reader = None;
            self.buffer.clear();
            return Some(Err(err));
        }
        if self.buffer.is_empty() {
            return None;
        }
        let pick = match self.config.seed {
            Some(seed) => {
                mix(seed ^ mix(self.cursor.epoch) ^ mix(self.cursor.emitted.wrapping_add(0x5EED)))
                    % self.buffer.len() as u64
            }
            None => 0,
        };
        self.cursor.emitted = self.cursor.emitted.wrapping_add(1);
        Some(Ok(self.buffer.swap_remove(pick as usize).1))
    }
}

/// SplitMix64's finaliser: a well-spread pick from a counter.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Reads `shards` in order (the first starting after `skip` items) on a thread, a few samples ahead.
fn spawn_reader(shards: Vec<PathBuf>, first_pos: usize, skip: u64, caption: CaptionKey) -> Receiver<Read> {
    let (sender, receiver) = sync_channel(READ_AHEAD);
    std::thread::spawn(move || {
        for (offset, shard) in shards.iter().enumerate() {
            let pos = first_pos + offset;
            let skip = if offset == 0 { skip } else { 0 };
            let mut index = 0u64;
            let sent = read_shard_with(shard, &caption, |item| {
                let at = index;
                index += 1;
                if at < skip {
                    return Ok(());
                }
                sender.send((pos, at, item)).map_err(|_| anyhow::anyhow!("stream dropped"))
            });
            if sent.is_err() {
                return;
            }
        }
    });
    receiver
}

/// Re-reads the samples a cursor's buffer names, in the cursor's buffer order.
fn refill_buffer(order: &[PathBuf], caption: &CaptionKey, wanted: &[(usize, u64)]) -> Result<Vec<Slot>> {
    let mut by_shard: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for &(pos, index) in wanted {
        by_shard.entry(pos).or_default().push(index);
    }
    let mut found: BTreeMap<(usize, u64), WdsSample> = BTreeMap::new();
    for (pos, indices) in by_shard {
        let mut index = 0u64;
        read_shard_with(&order[pos], caption, |item| {
            if indices.contains(&index) {
                if let Ok(sample) = item {
                    found.insert((pos, index), sample);
                }
            }
            index += 1;
            Ok(())
        })?;
    }
    wanted
        .iter()
        .map(|at| match found.remove(at) {
            Some(sample) => Ok((*at, sample)),
            None => bail!(
                "{}: item {} named by the stream cursor is gone: the shard changed since the cursor was saved",
                order[at.0].display(),
                at.1
            ),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image_io;
    use crate::webdataset::ShardBuilder;
    use image::{Rgb, RgbImage};

    fn shards(dir: &std::path::Path, n: usize, per: usize) -> Vec<PathBuf> {
        let png = image_io::encode_png(&RgbImage::from_pixel(2, 2, Rgb([9, 9, 9]))).unwrap();
        (0..n)
            .map(|s| {
                let mut shard = ShardBuilder::new();
                for k in 0..per {
                    shard
                        .add(&format!("s{s}k{k}"), &[("png", &png), ("txt", format!("caption {s} {k}").as_bytes())])
                        .unwrap();
                }
                let path = dir.join(format!("{s:05}.tar"));
                std::fs::write(&path, shard.finish().unwrap()).unwrap();
                path
            })
            .collect()
    }

    fn config(buffer: usize) -> StreamConfig {
        StreamConfig {
            seed: Some(7),
            shuffle_buffer: buffer,
            caption: CaptionKey::Auto,
            on_bad_record: OnBadRecord::Skip,
        }
    }

    fn keys(stream: impl Iterator<Item = Result<WdsSample>>) -> Vec<String> {
        stream.map(|s| s.unwrap().key).collect()
    }

    #[test]
    fn every_sample_once_in_a_seeded_order_that_differs_by_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let paths = shards(dir.path(), 5, 4);
        let a = keys(ShardStream::new(paths.clone(), config(6), StreamCursor::default()).unwrap());
        let b = keys(ShardStream::new(paths.clone(), config(6), StreamCursor::default()).unwrap());
        let next =
            keys(ShardStream::new(paths.clone(), config(6), StreamCursor { epoch: 1, ..Default::default() }).unwrap());
        assert_eq!(a, b, "same seed, same order");
        assert_ne!(a, next, "another epoch, another order");
        let mut sorted = a.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 20);
        let in_shard_order: Vec<String> = (0..5).flat_map(|s| (0..4).map(move |k| format!("s{s}k{k}"))).collect();
        assert_ne!(a, in_shard_order, "shuffled");
        let sequential = StreamConfig { seed: None, ..config(6) };
        assert_eq!(
            keys(ShardStream::new(paths, sequential, StreamCursor::default()).unwrap()),
            in_shard_order,
            "no seed: file order"
        );
    }

    #[test]
    fn a_restored_cursor_continues_the_exact_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let paths = shards(dir.path(), 6, 5);
        let full = keys(ShardStream::new(paths.clone(), config(7), StreamCursor::default()).unwrap());
        for stop in [0, 1, 9, 17, 29] {
            let mut first = ShardStream::new(paths.clone(), config(7), StreamCursor::default()).unwrap();
            let mut got = keys(first.by_ref().take(stop));
            let cursor: StreamCursor = serde_json::from_str(&serde_json::to_string(&first.cursor()).unwrap()).unwrap();
            drop(first);
            got.extend(keys(ShardStream::new(paths.clone(), config(7), cursor).unwrap()));
            assert_eq!(got, full, "resumed after {stop}");
        }
    }

    #[test]
    fn a_truncated_shard_is_skipped_and_counted_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let paths = shards(dir.path(), 3, 4);
        let bytes = std::fs::read(&paths[1]).unwrap();
        std::fs::write(&paths[1], &bytes[..bytes.len() / 2]).unwrap();
        let mut stream = ShardStream::new(paths.clone(), config(3), StreamCursor::default()).unwrap();
        let got = keys(stream.by_ref());
        assert!(got.len() < 12 && got.len() >= 8, "{got:?}");
        assert_eq!(stream.skipped().count, 1);
        assert!(stream.skipped().first[0].contains("00001.tar"), "{:?}", stream.skipped());
        let strict = StreamConfig { on_bad_record: OnBadRecord::Fail, ..config(3) };
        let err = ShardStream::new(paths, strict, StreamCursor::default())
            .unwrap()
            .find_map(Result::err)
            .unwrap()
            .to_string();
        assert!(err.contains("00001.tar"), "{err}");
    }
}
