//! A minimal zip reader (central directory, zip64) for PyTorch archives, whose records are
//! stored uncompressed so their bytes can be borrowed straight from the memory map.

/// Zip parse errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ZipError {
    /// No end-of-central-directory record: not a zip, or cut short.
    #[error("zip end-of-central-directory record not found (file truncated or not a zip)")]
    NoEndOfDirectory,
    /// A structure lies (partly) beyond the end of the file.
    #[error("zip {what} at byte {offset} extends past the end of the file ({len} bytes)")]
    OutOfBounds {
        /// Which structure.
        what: &'static str,
        /// Where it starts.
        offset: u64,
        /// File length.
        len: u64,
    },
    /// A structure does not carry its signature.
    #[error("zip {what} at byte {offset} has a bad signature")]
    BadSignature {
        /// Which structure.
        what: &'static str,
        /// Where it was expected.
        offset: u64,
    },
    /// A record is compressed or encrypted; PyTorch stores records uncompressed.
    #[error(
        "zip record {name} is compressed (method {method}) or encrypted; only stored records are supported"
    )]
    Compressed {
        /// The record.
        name: String,
        /// The compression method.
        method: u16,
    },
    /// A record name is not UTF-8.
    #[error("zip record name at byte {offset} is not UTF-8")]
    BadName {
        /// Where the central directory entry starts.
        offset: u64,
    },
}

/// One record of an archive: where its stored bytes lie in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ZipRecord {
    pub name: String,
    /// Byte offset of the data in the file.
    pub data_start: usize,
    /// Length of the data.
    pub size: usize,
    /// Compression method (0 = stored) and general-purpose flags.
    pub method: u16,
    pub flags: u16,
}

impl ZipRecord {
    /// Checks that the record is stored (not compressed or encrypted).
    pub(crate) fn require_stored(&self) -> Result<(), ZipError> {
        if self.method != 0 || self.flags & 1 != 0 {
            return Err(ZipError::Compressed {
                name: self.name.clone(),
                method: self.method,
            });
        }
        Ok(())
    }
}

const EOCD_SIG: u32 = 0x0605_4b50;
const EOCD64_LOCATOR_SIG: u32 = 0x0706_4b50;
const EOCD64_SIG: u32 = 0x0606_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;

fn get<'a>(b: &'a [u8], off: u64, n: usize, what: &'static str) -> Result<&'a [u8], ZipError> {
    let oob = || ZipError::OutOfBounds {
        what,
        offset: off,
        len: b.len() as u64,
    };
    let start = usize::try_from(off).map_err(|_| oob())?;
    let end = start.checked_add(n).ok_or_else(oob)?;
    b.get(start..end).ok_or_else(oob)
}

fn u16_at(s: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([s[i], s[i + 1]])
}

fn u32_at(s: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]])
}

fn u64_at(s: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&s[i..i + 8]);
    u64::from_le_bytes(a)
}

/// Finds the central directory: (entry count, offset).
fn find_directory(b: &[u8]) -> Result<(u64, u64), ZipError> {
    if b.len() < 22 {
        return Err(ZipError::NoEndOfDirectory);
    }
    // The EOCD record is 22 bytes plus a comment of up to 65535 bytes at the end.
    let lowest = b.len().saturating_sub(22 + 65535);
    let eocd = (lowest..=b.len() - 22)
        .rev()
        .find(|&i| u32_at(b, i) == EOCD_SIG)
        .ok_or(ZipError::NoEndOfDirectory)?;
    let mut count = u64::from(u16_at(b, eocd + 10));
    let mut offset = u64::from(u32_at(b, eocd + 16));
    // Zip64: the locator sits just before the EOCD record.
    if eocd >= 20 && u32_at(b, eocd - 20) == EOCD64_LOCATOR_SIG {
        let loc = &b[eocd - 20..eocd];
        let off64 = u64_at(loc, 8);
        let rec = get(b, off64, 56, "zip64 end of central directory")?;
        if u32_at(rec, 0) != EOCD64_SIG {
            return Err(ZipError::BadSignature {
                what: "zip64 end of central directory",
                offset: off64,
            });
        }
        count = u64_at(rec, 32);
        offset = u64_at(rec, 48);
    }
    Ok((count, offset))
}

/// Lists the records of the archive in `b` (in directory order).
pub(crate) fn read_directory(b: &[u8]) -> Result<Vec<ZipRecord>, ZipError> {
    let (count, mut pos) = find_directory(b)?;
    let mut out = Vec::new();
    for _ in 0..count {
        let fixed = get(b, pos, 46, "central directory entry")?;
        if u32_at(fixed, 0) != CENTRAL_SIG {
            return Err(ZipError::BadSignature {
                what: "central directory entry",
                offset: pos,
            });
        }
        let flags = u16_at(fixed, 8);
        let method = u16_at(fixed, 10);
        let mut csize = u64::from(u32_at(fixed, 20));
        let mut usize_ = u64::from(u32_at(fixed, 24));
        let name_len = usize::from(u16_at(fixed, 28));
        let extra_len = usize::from(u16_at(fixed, 30));
        let comment_len = usize::from(u16_at(fixed, 32));
        let mut local = u64::from(u32_at(fixed, 42));
        let name = get(b, pos + 46, name_len, "central directory name")?;
        let name = std::str::from_utf8(name)
            .map_err(|_| ZipError::BadName { offset: pos })?
            .to_string();
        let extra = get(
            b,
            pos + 46 + name_len as u64,
            extra_len,
            "central directory extra",
        )?;
        apply_zip64(extra, &mut usize_, &mut csize, &mut local);
        pos += (46 + name_len + extra_len + comment_len) as u64;

        let lh = get(b, local, 30, "local file header")?;
        if u32_at(lh, 0) != LOCAL_SIG {
            return Err(ZipError::BadSignature {
                what: "local file header",
                offset: local,
            });
        }
        let data_start = local + 30 + u64::from(u16_at(lh, 26)) + u64::from(u16_at(lh, 28));
        let size = if method == 0 { usize_ } else { csize };
        let data = get(
            b,
            data_start,
            usize::try_from(size).unwrap_or(usize::MAX),
            "record data",
        )?;
        out.push(ZipRecord {
            name,
            data_start: data.as_ptr() as usize - b.as_ptr() as usize,
            size: data.len(),
            method,
            flags,
        });
    }
    Ok(out)
}

/// Replaces 0xFFFFFFFF fields by their values from a zip64 extended-information extra field.
fn apply_zip64(mut extra: &[u8], usize_: &mut u64, csize: &mut u64, local: &mut u64) {
    while extra.len() >= 4 {
        let id = u16_at(extra, 0);
        let len = usize::from(u16_at(extra, 2));
        let Some(body) = extra.get(4..4 + len) else {
            return;
        };
        if id == 1 {
            let mut vals = body.chunks_exact(8).map(|c| u64_at(c, 0));
            for field in [usize_, csize, local] {
                if *field == 0xFFFF_FFFF {
                    match vals.next() {
                        Some(v) => *field = v,
                        None => return,
                    }
                }
            }
            return;
        }
        extra = &extra[4 + len..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zip64_extra_field_replaces_saturated_values() {
        let mut extra = vec![0x0a, 0x00, 0x02, 0x00, 0xee, 0xee]; // another field first
        extra.extend_from_slice(&[0x01, 0x00, 0x10, 0x00]);
        extra.extend_from_slice(&(5u64 << 32).to_le_bytes());
        extra.extend_from_slice(&(7u64 << 32).to_le_bytes());
        let (mut u, mut c, mut l) = (0xFFFF_FFFF, 12, 0xFFFF_FFFF);
        apply_zip64(&extra, &mut u, &mut c, &mut l);
        // Values appear in order for the saturated fields only: size, then offset.
        assert_eq!((u, c, l), (5 << 32, 12, 7 << 32));
        // A field cut short leaves values alone instead of panicking.
        let (mut u, mut c, mut l) = (0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF);
        apply_zip64(&extra[..12], &mut u, &mut c, &mut l);
        assert_eq!((u, c, l), (0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF));
    }

    #[test]
    fn garbage_is_rejected() {
        assert_eq!(read_directory(b""), Err(ZipError::NoEndOfDirectory));
        assert_eq!(read_directory(&[0u8; 100]), Err(ZipError::NoEndOfDirectory));
        // An EOCD claiming one entry at an offset past the end.
        let mut eocd = vec![0u8; 22];
        eocd[..4].copy_from_slice(&EOCD_SIG.to_le_bytes());
        eocd[10] = 1;
        eocd[16..20].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(
            read_directory(&eocd),
            Err(ZipError::OutOfBounds { .. })
        ));
    }
}
