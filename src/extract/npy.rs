//! NumPy `.npy` (format 1.0) writing for little-endian f32 arrays, as `np.save` writes them; MERTools
//! reads per-sample feature files in this format.

use std::io::Write;

/// The bytes of an `.npy` file holding `data` with `shape` (C order, `<f4`).
pub fn npy_bytes(data: &[f32], shape: &[usize]) -> Vec<u8> {
    let dims = match shape {
        [] => String::new(),
        [n] => format!("{n},"),
        _ => shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({dims}), }}");
    // Magic (6) + version (2) + header length (2) + header + '\n' is a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        let _ = out.write_all(&v.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_numpy_format_1_0() {
        let b = npy_bytes(&[1.0, 2.0, 3.0], &[3]);
        assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
        let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        let header = std::str::from_utf8(&b[10..10 + hlen]).expect("ascii header");
        assert!(header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }"), "{header}");
        assert!(header.ends_with('\n'));
        assert_eq!(&b[10 + hlen..10 + hlen + 4], &1.0f32.to_le_bytes());
        assert_eq!(b.len(), 10 + hlen + 12);
        let h2 = npy_bytes(&[0.0; 6], &[2, 3]);
        assert!(std::str::from_utf8(&h2[10..]).unwrap_or("").contains("'shape': (2, 3)"));
    }
}
