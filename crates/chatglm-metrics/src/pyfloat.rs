//! Python and NumPy floating-point behaviour the official script relies on, reproduced bit for bit:
//! `round(x, 4)`, `math.fsum`, `numpy.mean` and `str.isspace`.

/// Python's `round(x, 4)`: the double nearest to the decimal value of `x` rounded to 4 decimals,
/// ties (on the exact binary value of `x`) to even.
///
/// Rust's fixed-precision formatting is exact and rounds half to even, as CPython's `round` does
/// through `_Py_dg_dtoa`; parsing the digits back is correctly rounded, as `_Py_dg_strtod` is.
pub fn py_round4(x: f64) -> f64 {
    if !x.is_finite() {
        return x;
    }
    // The formatted text is always a valid float literal.
    format!("{x:.4}").parse().unwrap_or(x)
}

/// Python's `math.fsum`: the correctly rounded sum of `values` (Shewchuk's exact partials, with
/// CPython's final half-way correction).
pub fn fsum(values: &[f64]) -> f64 {
    let mut partials: Vec<f64> = Vec::with_capacity(values.len());
    for &value in values {
        let mut x = value;
        let mut kept = 0;
        for j in 0..partials.len() {
            let mut y = partials[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                partials[kept] = lo;
                kept += 1;
            }
            x = hi;
        }
        partials.truncate(kept);
        partials.push(x);
    }
    let Some(&top) = partials.last() else {
        return 0.0;
    };
    let mut hi = top;
    let mut lo = 0.0;
    let mut n = partials.len() - 1;
    while n > 0 {
        n -= 1;
        let x = hi;
        let y = partials[n];
        hi = x + y;
        let y_rounded = hi - x;
        lo = y - y_rounded;
        if lo != 0.0 {
            break;
        }
    }
    if n > 0 && ((lo < 0.0 && partials[n - 1] < 0.0) || (lo > 0.0 && partials[n - 1] > 0.0)) {
        let y = lo * 2.0;
        let x = hi + y;
        if y == x - hi {
            hi = x;
        }
    }
    hi
}

/// NumPy's pairwise summation of a contiguous float64 array (`numpy.add.reduce`), block size 128
/// with eight accumulators, exactly as `pairwise_sum_DOUBLE` does it.
pub fn numpy_sum(values: &[f64]) -> f64 {
    0.0 + pairwise_sum(values)
}

fn pairwise_sum(a: &[f64]) -> f64 {
    const BLOCK: usize = 128;
    let n = a.len();
    if n < 8 {
        let mut res = 0.0;
        for &v in a {
            res += v;
        }
        res
    } else if n <= BLOCK {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let whole = n - n % 8;
        let mut i = 8;
        while i < whole {
            for (j, acc) in r.iter_mut().enumerate() {
                *acc += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &v in &a[whole..] {
            res += v;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

/// `float(numpy.mean(values))`; `None` for no values (NumPy would give `nan` and a warning).
pub fn numpy_mean(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        None
    } else {
        Some(numpy_sum(values) / values.len() as f64)
    }
}

/// Python's `str.isspace` for one character (what `str.split()` and `str.rstrip()` strip):
/// Unicode `White_Space` plus the ASCII separators U+001C..U+001F.
pub fn py_isspace(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\u{1c}'..='\u{1f}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round4_is_half_even_on_the_exact_value() {
        // 0.03125 is exact in binary: a true tie, Python gives 0.0312.
        assert_eq!(py_round4(0.03125), 0.0312);
        assert_eq!(py_round4(0.03135), 0.0314);
        // 1.00005 is stored just above the tie (values checked with CPython 3.11).
        assert_eq!(py_round4(1.00005), 1.0001);
        assert_eq!(py_round4(66.666_666_666), 66.6667);
        assert_eq!(py_round4(100.0), 100.0);
    }

    #[test]
    fn fsum_is_exact() {
        assert_eq!(fsum(&[1e100, 1.0, -1e100]), 1.0);
        assert_eq!(fsum(&[0.1; 10]), 1.0);
        assert_eq!(fsum(&[]), 0.0);
        // Half-way case that naive partial summation rounds wrongly.
        assert_eq!(fsum(&[1.0, 1e-16, 1e-16]), 1.0000000000000002);
    }

    #[test]
    fn numpy_mean_blocks() {
        let v: Vec<f64> = (0..1000).map(|i| (i as f64) * 0.1).collect();
        let m = numpy_mean(&v).unwrap();
        assert!((m - 49.95).abs() < 1e-9);
        assert_eq!(numpy_mean(&[]), None);
        assert_eq!(numpy_mean(&[3.0]), Some(3.0));
    }

    #[test]
    fn isspace_matches_python() {
        for c in [
            '\t', '\n', '\u{b}', '\u{c}', '\r', '\u{1c}', '\u{1f}', ' ', '\u{85}', '\u{a0}',
            '\u{3000}',
        ] {
            assert!(py_isspace(c), "{c:?}");
        }
        for c in ['\u{200b}', '\u{feff}', 'a', '。'] {
            assert!(!py_isspace(c), "{c:?}");
        }
    }
}
