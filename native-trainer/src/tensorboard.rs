//! TensorBoard event files (`events.out.tfevents.*`) beside `metrics.jsonl`, so that
//! `tensorboard --logdir runs/` shows a run's curves and its hyper-parameters.
//!
//! The format, written here directly (the Rust crates that write it are unmaintained and pull in
//! image and protobuf stacks for what is 150 lines): a TFRecord file (each record: u64 length,
//! masked CRC-32C of the length, the bytes, masked CRC-32C of the bytes; little-endian) of
//! `tensorflow.Event` protocol buffers (tensorflow/core/util/event.proto): first one holding
//! `file_version: "brain.Event:2"`, then one per step with a `Summary` of scalar values
//! (`simple_value`) or a text value (a string tensor tagged for the text plugin).

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Event file names start with this (TensorBoard finds files by it).
pub const EVENTS_PREFIX: &str = "events.out.tfevents.";

/// Appends events to one file.
pub struct EventWriter {
    file: std::fs::File,
    path: PathBuf,
}

impl EventWriter {
    /// Starts `dir/events.out.tfevents.<unix seconds>.itera-lite` with its version record.
    /// Earlier event files of `dir` are removed first: a resumed run rewrites its history
    /// (as `metrics.jsonl` is rewritten), so that no curve shows steps twice.
    pub fn create(dir: &Path) -> Result<Self> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(EVENTS_PREFIX) {
                std::fs::remove_file(entry.path()).with_context(|| format!("removing {}", entry.path().display()))?;
            }
        }
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let path = dir.join(format!("{EVENTS_PREFIX}{secs}.itera-lite"));
        let file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut w = EventWriter { file, path };
        let mut event = Vec::new();
        put_f64(&mut event, 1, wall_time());
        put_bytes(&mut event, 3, b"brain.Event:2");
        w.record(&event)?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Scalars `(tag, value)` at `step`, in one event.
    pub fn scalars(&mut self, step: usize, values: &[(&str, f64)]) -> Result<()> {
        let mut summary = Vec::new();
        for (tag, v) in values {
            let mut value = Vec::new();
            put_bytes(&mut value, 1, tag.as_bytes());
            put_f32(&mut value, 2, *v as f32);
            put_bytes(&mut summary, 1, &value);
        }
        self.summary(step, &summary)
    }

    /// A text value (markdown, as TensorBoard's text plugin shows it) at `step`.
    pub fn text(&mut self, step: usize, tag: &str, text: &str) -> Result<()> {
        let mut plugin = Vec::new();
        put_bytes(&mut plugin, 1, b"text");
        let mut metadata = Vec::new();
        put_bytes(&mut metadata, 1, &plugin);
        let mut tensor = Vec::new();
        put_varint_field(&mut tensor, 1, 7); // dtype: DT_STRING
        put_bytes(&mut tensor, 2, &[]); // tensor_shape: a scalar
        put_bytes(&mut tensor, 8, text.as_bytes()); // string_val
        let mut value = Vec::new();
        put_bytes(&mut value, 1, tag.as_bytes());
        put_bytes(&mut value, 9, &metadata);
        put_bytes(&mut value, 8, &tensor);
        let mut summary = Vec::new();
        put_bytes(&mut summary, 1, &value);
        self.summary(step, &summary)
    }

    fn summary(&mut self, step: usize, summary: &[u8]) -> Result<()> {
        let mut event = Vec::new();
        put_f64(&mut event, 1, wall_time());
        put_varint_field(&mut event, 2, step as u64);
        put_bytes(&mut event, 5, summary);
        self.record(&event)
    }

    /// One TFRecord, flushed (a killed run keeps every event written before).
    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut rec = Vec::with_capacity(data.len() + 16);
        rec.extend_from_slice(&len);
        rec.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
        rec.extend_from_slice(data);
        rec.extend_from_slice(&masked_crc32c(data).to_le_bytes());
        self.file.write_all(&rec).with_context(|| format!("appending to {}", self.path.display()))?;
        self.file.flush().with_context(|| format!("appending to {}", self.path.display()))
    }
}

fn wall_time() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

// --- protocol buffer encoding (the four wire types these messages use)

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, ((field as u64) << 3) | wire as u64);
}

fn put_varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    put_key(out, field, 0);
    put_varint(out, v);
}

fn put_f64(out: &mut Vec<u8>, field: u32, v: f64) {
    put_key(out, field, 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, field: u32, v: &[u8]) {
    put_key(out, field, 2);
    put_varint(out, v.len() as u64);
    out.extend_from_slice(v);
}

fn put_f32(out: &mut Vec<u8>, field: u32, v: f32) {
    put_key(out, field, 5);
    out.extend_from_slice(&v.to_le_bytes());
}

// --- CRC-32C (Castagnoli), as TFRecord checksums it

const fn crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0x82F6_3B78 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

const CRC32C: [u32; 256] = crc32c_table();

pub fn crc32c(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |c, &b| CRC32C[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8))
}

/// TFRecord's masked CRC: rotated right by 15 bits, plus a constant.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let c = crc32c(data);
    c.rotate_right(15).wrapping_add(0xA282_EAD8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_published_check_values() {
        // RFC 3720 B.4 and the common "123456789" check value of CRC-32C.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
    }

    #[test]
    fn varints_encode_as_protobuf_does() {
        let enc = |v| {
            let mut o = Vec::new();
            put_varint(&mut o, v);
            o
        };
        assert_eq!(enc(1), [1]);
        assert_eq!(enc(150), [0x96, 0x01]); // the protobuf documentation's example
        assert_eq!(enc(300), [0xAC, 0x02]);
    }
}
