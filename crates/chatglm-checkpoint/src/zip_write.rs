//! A zip writer producing the same layout as PyTorch's archive writer (miniz): stored records
//! whose data start on 64-byte boundaries (padded with an `FB` extra field), a data descriptor
//! after each record, and zip64 end records.

use std::io::{self, Write};

/// Alignment of record data, as `torch.save` uses.
pub(crate) const ALIGNMENT: u64 = 64;
const MAX32: u64 = 0xFFFF_FFFF;

/// Continues a CRC-32 (IEEE) over `data` (start with 0).
pub(crate) fn crc32(crc: u32, data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(crc);
    h.update(data);
    h.finalize()
}

struct Written {
    name: String,
    offset: u64,
    size: u64,
    crc: u32,
}

/// Writes stored records to `W`, then the central directory on [`ZipWriter::finish`].
pub(crate) struct ZipWriter<W: Write> {
    out: W,
    cursor: u64,
    records: Vec<Written>,
}

impl<W: Write> ZipWriter<W> {
    pub(crate) fn new(out: W) -> Self {
        ZipWriter {
            out,
            cursor: 0,
            records: Vec::new(),
        }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.cursor += bytes.len() as u64;
        Ok(())
    }

    /// Adds one stored record whose data are the concatenation of `parts`.
    pub(crate) fn add(&mut self, name: &str, parts: &[&[u8]]) -> io::Result<()> {
        let size: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let offset = self.cursor;
        let big = size >= MAX32 || offset >= MAX32;
        let name_len = name.len() as u64;
        // A zip64 extra field in the local header when sizes or offset need 64 bits.
        let zip64_local = if big { 4 + 16 } else { 0 };
        let start = offset + 30 + name_len + zip64_local + 4;
        let padding = (ALIGNMENT - start % ALIGNMENT) % ALIGNMENT;
        let extra_len = zip64_local + 4 + padding;
        let mut h = Vec::with_capacity(64 + name.len() + padding as usize);
        h.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes()); // version needed
        h.extend_from_slice(&0x0808u16.to_le_bytes()); // data descriptor + UTF-8 names
        h.extend_from_slice(&[0u8; 6]); // method (stored), time, date
        h.extend_from_slice(&[0u8; 12]); // crc and sizes follow in the data descriptor
        h.extend_from_slice(&(name_len as u16).to_le_bytes());
        h.extend_from_slice(&(extra_len as u16).to_le_bytes());
        h.extend_from_slice(name.as_bytes());
        if big {
            h.extend_from_slice(&1u16.to_le_bytes());
            h.extend_from_slice(&16u16.to_le_bytes());
            h.extend_from_slice(&size.to_le_bytes());
            h.extend_from_slice(&size.to_le_bytes());
        }
        h.extend_from_slice(b"FB");
        h.extend_from_slice(&(padding as u16).to_le_bytes());
        h.resize(h.len() + padding as usize, b'Z');
        self.put(&h)?;
        let mut crc = 0;
        for p in parts {
            crc = crc32(crc, p);
            self.put(p)?;
        }
        let mut d = Vec::with_capacity(24);
        d.extend_from_slice(&0x0807_4b50u32.to_le_bytes());
        d.extend_from_slice(&crc.to_le_bytes());
        if big {
            d.extend_from_slice(&size.to_le_bytes());
            d.extend_from_slice(&size.to_le_bytes());
        } else {
            d.extend_from_slice(&(size as u32).to_le_bytes());
            d.extend_from_slice(&(size as u32).to_le_bytes());
        }
        self.put(&d)?;
        self.records.push(Written {
            name: name.to_string(),
            offset,
            size,
            crc,
        });
        Ok(())
    }

    /// Writes the central directory and end records; returns the writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        let cd_offset = self.cursor;
        let mut cd = Vec::new();
        for r in &self.records {
            let mut zip64 = Vec::new();
            let size32 = if r.size >= MAX32 {
                zip64.extend_from_slice(&r.size.to_le_bytes());
                zip64.extend_from_slice(&r.size.to_le_bytes());
                MAX32 as u32
            } else {
                r.size as u32
            };
            let offset32 = if r.offset >= MAX32 {
                zip64.extend_from_slice(&r.offset.to_le_bytes());
                MAX32 as u32
            } else {
                r.offset as u32
            };
            let extra_len = if zip64.is_empty() { 0 } else { 4 + zip64.len() };
            cd.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
            cd.extend_from_slice(&[0u8; 4]); // version made by, version needed
            cd.extend_from_slice(&0x0808u16.to_le_bytes());
            cd.extend_from_slice(&[0u8; 6]); // method, time, date
            cd.extend_from_slice(&r.crc.to_le_bytes());
            cd.extend_from_slice(&size32.to_le_bytes());
            cd.extend_from_slice(&size32.to_le_bytes());
            cd.extend_from_slice(&(r.name.len() as u16).to_le_bytes());
            cd.extend_from_slice(&(extra_len as u16).to_le_bytes());
            cd.extend_from_slice(&[0u8; 10]); // comment length, disk, internal and external attributes
            cd.extend_from_slice(&offset32.to_le_bytes());
            cd.extend_from_slice(r.name.as_bytes());
            if !zip64.is_empty() {
                cd.extend_from_slice(&1u16.to_le_bytes());
                cd.extend_from_slice(&(zip64.len() as u16).to_le_bytes());
                cd.extend_from_slice(&zip64);
            }
        }
        self.put(&cd)?;
        let cd_size = cd.len() as u64;
        let count = self.records.len() as u64;
        let eocd64_offset = self.cursor;
        let mut e = Vec::with_capacity(56 + 20 + 22);
        e.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
        e.extend_from_slice(&44u64.to_le_bytes());
        e.extend_from_slice(&0x031eu16.to_le_bytes()); // made by: unix, 3.0
        e.extend_from_slice(&45u16.to_le_bytes()); // needed: 4.5 (zip64)
        e.extend_from_slice(&[0u8; 8]); // disk numbers
        e.extend_from_slice(&count.to_le_bytes());
        e.extend_from_slice(&count.to_le_bytes());
        e.extend_from_slice(&cd_size.to_le_bytes());
        e.extend_from_slice(&cd_offset.to_le_bytes());
        e.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
        e.extend_from_slice(&0u32.to_le_bytes());
        e.extend_from_slice(&eocd64_offset.to_le_bytes());
        e.extend_from_slice(&1u32.to_le_bytes());
        e.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        e.extend_from_slice(&[0u8; 4]); // disk numbers
        let count16 = count.min(0xFFFF) as u16;
        e.extend_from_slice(&count16.to_le_bytes());
        e.extend_from_slice(&count16.to_le_bytes());
        e.extend_from_slice(&(cd_size.min(MAX32) as u32).to_le_bytes());
        e.extend_from_slice(&(cd_offset.min(MAX32) as u32).to_le_bytes());
        e.extend_from_slice(&0u16.to_le_bytes()); // comment length
        self.put(&e)?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zip::read_directory;

    #[test]
    fn crc_matches_known_value() {
        // The standard check value of CRC-32.
        assert_eq!(crc32(0, b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(crc32(0, b"1234"), b"56789"), 0xCBF4_3926);
    }

    #[test]
    fn written_archive_reads_back_aligned() {
        let mut w = ZipWriter::new(Vec::new());
        w.add("a/data.pkl", &[b"hello"]).unwrap();
        w.add("a/data/0", &[b"12", b"345"]).unwrap();
        w.add("a/empty", &[]).unwrap();
        let bytes = w.finish().unwrap();
        let recs = read_directory(&bytes).unwrap();
        let got: Vec<_> = recs
            .iter()
            .map(|r| (r.name.as_str(), &bytes[r.data_start..r.data_start + r.size]))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a/data.pkl", &b"hello"[..]),
                ("a/data/0", &b"12345"[..]),
                ("a/empty", &b""[..])
            ]
        );
        assert!(
            recs.iter()
                .all(|r| (r.data_start as u64).is_multiple_of(ALIGNMENT))
        );
    }
}
