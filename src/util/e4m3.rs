//! `float8_e4m3fn`: 1 sign bit, 4 exponent bits with bias 7, 3 mantissa bits; no infinities,
//! NaN at `S.1111.111`, largest finite ±448. The format of FP8 checkpoints and FP8 caches.

/// Largest finite e4m3fn value.
pub const E4M3_MAX: f32 = 448.0;

/// Every e4m3fn byte's value, exactly.
pub(crate) fn decode_table() -> &'static [f32; 256] {
    static TABLE: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = [0.0f32; 256];
        for (byte, value) in table.iter_mut().enumerate() {
            let sign = if byte & 0x80 != 0 { -1.0f32 } else { 1.0 };
            let exponent = ((byte >> 3) & 0xf) as i32;
            let mantissa = (byte & 0x7) as f32;
            *value = match (exponent, byte & 0x7f) {
                (_, 0x7f) => f32::NAN,
                (0, _) => sign * mantissa / 8.0 * 2f32.powi(-6),
                _ => sign * (1.0 + mantissa / 8.0) * 2f32.powi(exponent - 7),
            };
        }
        table
    })
}

/// The value of one e4m3fn byte.
pub fn e4m3_to_f32(byte: u8) -> f32 {
    decode_table()[byte as usize]
}

/// The e4m3fn byte nearest `x` (ties to the even mantissa), saturating at ±448 as PyTorch's
/// `to(torch.float8_e4m3fn)` after a clamp does; NaN stays NaN.
pub fn f32_to_e4m3(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7f;
    }
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    let a = x.abs().min(E4M3_MAX);
    // The nearest of the 127 non-negative finite values; the table is sorted by byte.
    let table = decode_table();
    // The first byte whose value reaches `a` (the finite non-negative values rise with the byte).
    let upper = table[..0x7f].partition_point(|&v| v < a).min(0x7e) as u8;
    let chosen = match upper {
        0 => 0,
        b => {
            let (below, above) = (table[b as usize - 1], table[b as usize]);
            match (a - below).partial_cmp(&(above - a)) {
                Some(std::cmp::Ordering::Less) => b - 1,
                Some(std::cmp::Ordering::Greater) => b,
                // A tie: the even mantissa (the even byte).
                _ => {
                    if b % 2 == 0 {
                        b
                    } else {
                        b - 1
                    }
                }
            }
        }
    };
    sign | chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_codec_matches_the_format() {
        assert_eq!(e4m3_to_f32(0x00), 0.0);
        assert_eq!(e4m3_to_f32(0x38), 1.0); // exponent 7 = bias
        assert_eq!(e4m3_to_f32(0x7e), 448.0);
        assert_eq!(e4m3_to_f32(0xfe), -448.0);
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9)); // smallest subnormal
        assert!(e4m3_to_f32(0x7f).is_nan() && e4m3_to_f32(0xff).is_nan());
        // Every finite byte round-trips.
        for b in 0u8..=255 {
            if b & 0x7f != 0x7f {
                let v = e4m3_to_f32(b);
                let back = f32_to_e4m3(v);
                assert!(
                    back == b || (v == 0.0 && back & 0x7f == 0),
                    "{b:#x} → {v} → {back:#x}"
                );
            }
        }
        assert_eq!(f32_to_e4m3(1000.0), 0x7e, "saturates");
        assert_eq!(f32_to_e4m3(-1e9), 0xfe);
        // 1.0625 lies halfway between 1.0 (0x38) and 1.125 (0x39): ties to the even byte.
        assert_eq!(f32_to_e4m3(1.0625), 0x38);
        assert_eq!(f32_to_e4m3(1.1875), 0x3a);
        assert_eq!(f32_to_e4m3(1.1), 0x39);
    }
}
