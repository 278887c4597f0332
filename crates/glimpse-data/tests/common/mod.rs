//! Shared by glimpse-data's tests: PNG chunks written by hand, for files
//! with lying headers and bombs that no encoder would write.

/// Appends one PNG chunk (length, kind, data, CRC-32 of kind + data).
pub fn chunk(png: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    png.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    png.extend_from_slice(kind);
    png.extend_from_slice(data);
    png.extend_from_slice(&crc.sum().to_be_bytes());
}
