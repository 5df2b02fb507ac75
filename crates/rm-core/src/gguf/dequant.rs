//! ggml tensor types and their dequantization to f32.
//!
//! Block layouts (ggml's `block_*` structs, little-endian):
//! - `Q4_0`: f16 scale `d`, 16 bytes of nibbles; element `j` (0..16) is `(low(q[j]) − 8)·d`,
//!   element `j + 16` is `(high(q[j]) − 8)·d`;
//! - `Q4_1`: f16 `d`, f16 minimum `m`, 16 bytes; elements `low(q[j])·d + m`, `high(q[j])·d + m`;
//! - `Q8_0`: f16 `d`, 32 signed bytes; element `q[j]·d`.
//!
//! Every type's block geometry is known so that any file parses; dequantization covers F32,
//! F16, BF16, Q4_0, Q4_1 and Q8_0 (K-quants are reported as unsupported).

use half::{bf16, f16};
use rayon::prelude::*;

/// A ggml tensor type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    I8,
    I16,
    I32,
    I64,
    F64,
    BF16,
}

impl GgmlType {
    /// The type of a ggml type id, if known.
    pub fn from_id(id: u32) -> Option<Self> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2K,
            11 => Q3K,
            12 => Q4K,
            13 => Q5K,
            14 => Q6K,
            15 => Q8K,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            30 => BF16,
            _ => return None,
        })
    }

    /// (elements per block, bytes per block).
    pub fn block(self) -> (u64, u64) {
        use GgmlType::*;
        match self {
            F32 | I32 => (1, 4),
            F16 | BF16 | I16 => (1, 2),
            I8 => (1, 1),
            I64 | F64 => (1, 8),
            Q4_0 => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            Q8_1 => (32, 36),
            Q2K => (256, 84),
            Q3K => (256, 110),
            Q4K => (256, 144),
            Q5K => (256, 176),
            Q6K => (256, 210),
            Q8K => (256, 292),
        }
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantizes `n` elements of type `t` from `bytes` (whose length the parser has checked).
pub fn dequantize(t: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>, String> {
    let (block, block_bytes) = t.block();
    let (block, block_bytes) = (block as usize, block_bytes as usize);
    if !n.is_multiple_of(block) || bytes.len() != n / block * block_bytes {
        return Err(format!(
            "{} bytes do not hold {n} {t:?} elements",
            bytes.len()
        ));
    }
    let mut out = vec![0f32; n];
    match t {
        GgmlType::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => {
            out.par_chunks_mut(block)
                .zip(bytes.par_chunks(block_bytes))
                .for_each(|(o, b)| dequantize_block(t, b, o));
        }
        other => {
            return Err(format!(
                "dequantizing {other:?} is not supported (F32, F16, BF16, Q4_0, Q4_1 and Q8_0 are)"
            ));
        }
    }
    Ok(out)
}

fn dequantize_block(t: GgmlType, b: &[u8], out: &mut [f32]) {
    match t {
        GgmlType::Q4_0 => {
            let d = f16_at(b, 0);
            for j in 0..16 {
                let q = b[2 + j];
                out[j] = ((q & 0x0F) as f32 - 8.0) * d;
                out[j + 16] = ((q >> 4) as f32 - 8.0) * d;
            }
        }
        GgmlType::Q4_1 => {
            let d = f16_at(b, 0);
            let m = f16_at(b, 2);
            for j in 0..16 {
                let q = b[4 + j];
                out[j] = (q & 0x0F) as f32 * d + m;
                out[j + 16] = (q >> 4) as f32 * d + m;
            }
        }
        GgmlType::Q8_0 => {
            let d = f16_at(b, 0);
            for j in 0..32 {
                out[j] = (b[2 + j] as i8) as f32 * d;
            }
        }
        _ => unreachable!("only block types reach dequantize_block"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q4_0_by_hand() {
        // d = 0.5; byte j holds low nibble j % 16 and high nibble 15 - j % 16.
        let mut block = h(0.5).to_vec();
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let v = dequantize(GgmlType::Q4_0, &block, 32).unwrap();
        // element j = (j - 8) * 0.5; element j+16 = (15 - j - 8) * 0.5
        assert_eq!(v[0], -4.0);
        assert_eq!(v[8], 0.0);
        assert_eq!(v[15], 3.5);
        assert_eq!(v[16], 3.5);
        assert_eq!(v[31], -4.0);
    }

    #[test]
    fn q4_1_by_hand() {
        // d = 0.5, m = -1: element = nibble * 0.5 - 1.
        let mut block = h(0.5).to_vec();
        block.extend(h(-1.0));
        block.extend((0..16u8).map(|j| j | (3 << 4)));
        let v = dequantize(GgmlType::Q4_1, &block, 32).unwrap();
        assert_eq!(v[0], -1.0);
        assert_eq!(v[2], 0.0);
        assert_eq!(v[15], 6.5);
        assert!(v[16..].iter().all(|&x| x == 0.5));
    }

    #[test]
    fn q8_0_by_hand() {
        let mut block = h(0.25).to_vec();
        block.extend((0..32i32).map(|j| (j - 16) as i8 as u8));
        let v = dequantize(GgmlType::Q8_0, &block, 32).unwrap();
        assert_eq!(v[0], -4.0);
        assert_eq!(v[16], 0.0);
        assert_eq!(v[31], 3.75);
    }

    #[test]
    fn floats_and_size_checks() {
        let f: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(dequantize(GgmlType::F32, &f, 2).unwrap(), [1.5, -2.0]);
        let hf: Vec<u8> = [h(0.5), h(-3.0)].concat();
        assert_eq!(dequantize(GgmlType::F16, &hf, 2).unwrap(), [0.5, -3.0]);
        let b: Vec<u8> = [
            bf16::from_f32(2.0).to_le_bytes(),
            bf16::from_f32(-0.5).to_le_bytes(),
        ]
        .concat();
        assert_eq!(dequantize(GgmlType::BF16, &b, 2).unwrap(), [2.0, -0.5]);
        assert!(dequantize(GgmlType::F32, &f, 3).is_err());
        assert!(dequantize(GgmlType::Q4_0, &[0; 18], 31).is_err());
        assert!(
            dequantize(GgmlType::Q6K, &[0; 210], 256)
                .unwrap_err()
                .contains("not supported")
        );
    }
}
