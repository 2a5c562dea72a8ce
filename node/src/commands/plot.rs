//! Loss curves as PNG pictures: a small line chart with axes, tick labels and a legend, drawn
//! pixel by pixel with a built-in 5×7 font, so no font or plotting library is needed.

use std::path::Path;

use anyhow::Context;

/// One line on the chart.
pub struct Series {
    pub label: String,
    /// (x, y) points, in x order.
    pub points: Vec<(f64, f64)>,
}

const WIDTH: usize = 800;
const HEIGHT: usize = 500;
const LEFT: usize = 70;
const RIGHT: usize = 20;
const TOP: usize = 40;
const BOTTOM: usize = 50;
const COLORS: [[u8; 3]; 6] =
    [[31, 119, 180], [214, 39, 40], [44, 160, 44], [255, 127, 14], [148, 103, 189], [23, 190, 207]];

struct Canvas {
    pixels: Vec<u8>,
}

impl Canvas {
    fn new() -> Self {
        Self { pixels: vec![255; WIDTH * HEIGHT * 3] }
    }

    fn set(&mut self, x: i64, y: i64, color: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < WIDTH && (y as usize) < HEIGHT {
            let i = (y as usize * WIDTH + x as usize) * 3;
            self.pixels[i..i + 3].copy_from_slice(&color);
        }
    }

    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), color: [u8; 3], thick: bool) {
        let steps = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
        for s in 0..=steps {
            let x = x0 + (x1 - x0) * s / steps;
            let y = y0 + (y1 - y0) * s / steps;
            self.set(x, y, color);
            if thick {
                self.set(x, y + 1, color);
                self.set(x + 1, y, color);
            }
        }
    }

    fn text(&mut self, x: i64, y: i64, text: &str, color: [u8; 3]) {
        for (i, ch) in text.chars().enumerate() {
            let glyph = glyph(ch);
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..5 {
                    if bits & (1 << (4 - col)) != 0 {
                        self.set(x + i as i64 * 6 + col, y + row as i64, color);
                    }
                }
            }
        }
    }
}

/// Draws `series` with a title and axis names, and writes the PNG to `path`.
pub fn write_line_chart(path: &Path, title: &str, x_name: &str, y_name: &str, series: &[Series]) -> anyhow::Result<()> {
    let points: Vec<(f64, f64)> =
        series.iter().flat_map(|s| s.points.iter().copied()).filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
    anyhow::ensure!(!points.is_empty(), "nothing to plot");
    let (mut x_min, mut x_max) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.0), hi.max(p.0)));
    let (mut y_min, mut y_max) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
    if x_max <= x_min {
        x_max = x_min + 1.0;
        x_min -= 0.0;
    }
    if y_max <= y_min {
        y_max = y_min + 0.5;
        y_min -= 0.5;
    }
    let pad = (y_max - y_min) * 0.05;
    let (y_min, y_max) = (y_min - pad, y_max + pad);
    let plot_w = (WIDTH - LEFT - RIGHT) as f64;
    let plot_h = (HEIGHT - TOP - BOTTOM) as f64;
    let to_px = |(x, y): (f64, f64)| -> (i64, i64) {
        let px = LEFT as f64 + (x - x_min) / (x_max - x_min) * plot_w;
        let py = TOP as f64 + (1.0 - (y - y_min) / (y_max - y_min)) * plot_h;
        (px.round() as i64, py.round() as i64)
    };
    let mut canvas = Canvas::new();
    let black = [0, 0, 0];
    let grey = [225, 225, 225];
    for tick in 0..=5 {
        let fy = y_min + (y_max - y_min) * tick as f64 / 5.0;
        let (_, py) = to_px((x_min, fy));
        canvas.line((LEFT as i64, py), ((WIDTH - RIGHT) as i64, py), grey, false);
        canvas.text(4, py - 3, &format!("{fy:>9.3}"), black);
        let fx = x_min + (x_max - x_min) * tick as f64 / 5.0;
        let (px, _) = to_px((fx, y_min));
        canvas.line((px, TOP as i64), (px, (HEIGHT - BOTTOM) as i64), grey, false);
        let label = format_tick(fx);
        canvas.text(px - (label.len() as i64 * 3), (HEIGHT - BOTTOM + 8) as i64, &label, black);
    }
    let (x0, y0) = (LEFT as i64, (HEIGHT - BOTTOM) as i64);
    canvas.line((x0, TOP as i64), (x0, y0), black, false);
    canvas.line((x0, y0), ((WIDTH - RIGHT) as i64, y0), black, false);
    canvas.text(LEFT as i64, 12, title, black);
    canvas.text((WIDTH / 2) as i64 - (x_name.len() as i64 * 3), (HEIGHT - 18) as i64, x_name, black);
    canvas.text(4, 26, y_name, black);
    for (index, s) in series.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        let pixels: Vec<(i64, i64)> =
            s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).map(to_px).collect();
        for pair in pixels.windows(2) {
            canvas.line(pair[0], pair[1], color, true);
        }
        for &(x, y) in &pixels {
            for d in -2..=2 {
                canvas.set(x + d, y, color);
                canvas.set(x, y + d, color);
            }
        }
        let legend_y = TOP as i64 + 8 + index as i64 * 12;
        let legend_x = (WIDTH - RIGHT - 170) as i64;
        canvas.line((legend_x, legend_y + 3), (legend_x + 16, legend_y + 3), color, true);
        canvas.text(legend_x + 22, legend_y, &s.label, black);
    }
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), WIDTH as u32, HEIGHT as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().context("writing the PNG header")?;
    writer.write_image_data(&canvas.pixels).context("writing the PNG image")?;
    Ok(())
}

fn format_tick(value: f64) -> String {
    if value.abs() >= 1e6 {
        format!("{:.1}m", value / 1e6)
    } else if value.abs() >= 1e3 {
        format!("{:.0}k", value / 1e3)
    } else if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

/// A 5×7 bitmap glyph (rows top to bottom, 5 low bits per row). Lower-case letters are drawn
/// as capitals; characters without a glyph are blank.
fn glyph(ch: char) -> [u8; 7] {
    match ch.to_ascii_uppercase() {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        ',' => [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '+' => [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00],
        '=' => [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '_' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F],
        '×' => [0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x00],
        _ => [0; 7],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png_of_the_expected_size() {
        let dir = std::env::temp_dir().join(format!("trellis-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("loss.png");
        let series = vec![
            Series { label: "diloco".into(), points: vec![(0.0, 5.5), (1000.0, 3.2), (2000.0, 2.6)] },
            Series { label: "ddp".into(), points: vec![(0.0, 5.5), (1000.0, 3.0), (2000.0, 2.5)] },
        ];
        write_line_chart(&path, "validation loss", "tokens", "loss", &series).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (WIDTH as u32, HEIGHT as u32));
        assert!(write_line_chart(&path, "t", "x", "y", &[]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
