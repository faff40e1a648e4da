//! The loss curve as a PNG image (no plotting library: a small rasteriser and a 3x5 digit font).

use std::path::Path;

use crate::store::{StoreError, write_atomic};

/// Errors of drawing the curve.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// Nothing to draw.
    #[error("no finite loss values to plot")]
    Empty,
    /// PNG encoding failed.
    #[error("PNG encoding failed: {0}")]
    Encode(String),
    /// Writing the file failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

const W: usize = 800;
const H: usize = 480;
const LEFT: usize = 70;
const RIGHT: usize = 20;
const TOP: usize = 20;
const BOTTOM: usize = 40;

struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn new() -> Self {
        Self {
            px: vec![255; W * H * 3],
        }
    }
    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < W && (y as usize) < H {
            let i = (y as usize * W + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3], thick: bool) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.set(x, y, c);
            if thick {
                self.set(x + 1, y, c);
                self.set(x, y + 1, c);
            }
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }
    fn text(&mut self, x: i64, y: i64, s: &str, c: [u8; 3]) {
        const SCALE: i64 = 2;
        for (k, ch) in s.chars().enumerate() {
            let Some(rows) = glyph(ch) else { continue };
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..3 {
                    if bits & (0b100 >> col) != 0 {
                        for a in 0..SCALE {
                            for b in 0..SCALE {
                                self.set(
                                    x + k as i64 * 4 * SCALE + col * SCALE + a,
                                    y + r as i64 * SCALE + b,
                                    c,
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

fn glyph(c: char) -> Option<[u8; 5]> {
    Some(match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        'e' => [0, 7, 7, 4, 7],
        _ => return None,
    })
}

fn label(v: f64) -> String {
    if v.abs() >= 1e-3 && v.abs() < 1e5 {
        format!("{v:.3}")
    } else {
        format!("{v:.2e}")
    }
}

/// Renders `(step, loss)` points as an 800x480 RGB PNG (blue curve, axes, min/max labels).
pub fn loss_curve_png(points: &[(u64, f64)]) -> Result<Vec<u8>, PlotError> {
    let pts: Vec<(f64, f64)> = points
        .iter()
        .filter(|(_, l)| l.is_finite())
        .map(|&(s, l)| (s as f64, l))
        .collect();
    if pts.is_empty() {
        return Err(PlotError::Empty);
    }
    let (xmin, xmax) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (ymin, ymax) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let xspan = (xmax - xmin).max(1.0);
    let yspan = if ymax > ymin { ymax - ymin } else { 1.0 };
    let pw = (W - LEFT - RIGHT) as f64;
    let ph = (H - TOP - BOTTOM) as f64;
    let map = |(x, y): (f64, f64)| -> (i64, i64) {
        (
            LEFT as i64 + ((x - xmin) / xspan * pw).round() as i64,
            TOP as i64 + ((ymax - y) / yspan * ph).round() as i64,
        )
    };
    let mut c = Canvas::new();
    let grey = [200, 200, 200];
    let black = [0, 0, 0];
    for i in 0..=4 {
        let y = TOP as i64 + (ph * f64::from(i) / 4.0).round() as i64;
        c.line((LEFT as i64, y), ((W - RIGHT) as i64, y), grey, false);
    }
    let (x0, y0) = (LEFT as i64, (H - BOTTOM) as i64);
    c.line((x0, TOP as i64), (x0, y0), black, false);
    c.line((x0, y0), ((W - RIGHT) as i64, y0), black, false);
    let blue = [31, 119, 180];
    if pts.len() == 1 {
        let (x, y) = map(pts[0]);
        for d in -2..=2 {
            c.line((x - 2, y + d), (x + 2, y + d), blue, false);
        }
    }
    for w in pts.windows(2) {
        c.line(map(w[0]), map(w[1]), blue, true);
    }
    c.text(4, TOP as i64, &label(ymax), black);
    c.text(4, (H - BOTTOM) as i64 - 10, &label(ymin), black);
    c.text(
        LEFT as i64,
        (H - BOTTOM) as i64 + 10,
        &format!("{xmin}"),
        black,
    );
    let xl = format!("{xmax}");
    c.text(
        (W - RIGHT) as i64 - xl.len() as i64 * 8,
        (H - BOTTOM) as i64 + 10,
        &xl,
        black,
    );
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, W as u32, H as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc
            .write_header()
            .map_err(|e| PlotError::Encode(e.to_string()))?;
        writer
            .write_image_data(&c.px)
            .map_err(|e| PlotError::Encode(e.to_string()))?;
        writer
            .finish()
            .map_err(|e| PlotError::Encode(e.to_string()))?;
    }
    Ok(out)
}

/// Writes the loss curve to `path` (atomically).
pub fn save_loss_curve(path: &Path, points: &[(u64, f64)]) -> Result<(), PlotError> {
    let bytes = loss_curve_png(points)?;
    write_atomic(path, &bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_decodes_with_curve_pixels() {
        let bytes = loss_curve_png(&[(1, 3.0), (2, 2.0), (3, 0.5)]).unwrap();
        let dec = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        let info = r.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (W as u32, H as u32));
        // The first point (highest loss) sits at the top-left corner of the plot area.
        let i = (TOP * W + LEFT) * 3;
        assert_eq!(&buf[i..i + 3], &[31, 119, 180]);
        assert!(matches!(
            loss_curve_png(&[(1, f64::NAN)]),
            Err(PlotError::Empty)
        ));
    }
}
