//! Layer inputs as matrices: one row per (image, output position), one column per weight of
//! a neuron. A convolution is a matrix product over these patches ("im2col"), so GPFQ can
//! treat every layer as a linear one.

use rand::seq::index::sample;
use temper_core::kernels::ConvCfg;

/// A column-major matrix: column `j` holds the values that multiply weight `j` of a neuron.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ColMatrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl ColMatrix {
    pub fn col(&self, j: usize) -> &[f32] {
        &self.data[j * self.rows..(j + 1) * self.rows]
    }
}

/// Output size of a convolution along one axis.
pub(crate) fn conv_out(n: usize, k: usize, cfg: ConvCfg) -> usize {
    (n + 2 * cfg.padding).saturating_sub(cfg.dilation * (k - 1) + 1) / cfg.stride + 1
}

/// The rows to keep out of `total`: all of them, or `max_rows` drawn without replacement
/// from the seeded stream `stream` (sorted, so reads stay sequential).
pub(crate) fn select_rows(total: usize, max_rows: usize, stream: &str) -> Vec<usize> {
    if total <= max_rows {
        return (0..total).collect();
    }
    let mut rng = temper_core::seed::rng(stream);
    let mut v = sample(&mut rng, total, max_rows).into_vec();
    v.sort_unstable();
    v
}

/// The patches of group `group` of an NCHW input `x` (shape `dims`) for a convolution with a
/// `kh x kw` kernel over `cin_g` channels per group, at the output positions `rows`
/// (indices into `n * oh * ow`, row-major). Padding reads as zero.
pub(crate) fn unfold(
    x: &[f32],
    dims: [usize; 4],
    cfg: ConvCfg,
    (kh, kw): (usize, usize),
    group: usize,
    cin_g: usize,
    rows: &[usize],
) -> ColMatrix {
    let [_, c, h, w] = dims;
    let (oh, ow) = (conv_out(h, kh, cfg), conv_out(w, kw, cfg));
    let cols = cin_g * kh * kw;
    let m = rows.len();
    let mut data = vec![0f32; cols * m];
    for (r, &pos) in rows.iter().enumerate() {
        let n = pos / (oh * ow);
        let (oy, ox) = ((pos / ow) % oh, pos % ow);
        for ci in 0..cin_g {
            let plane = &x[(n * c + group * cin_g + ci) * h * w..][..h * w];
            for ky in 0..kh {
                let iy = (oy * cfg.stride + ky * cfg.dilation) as isize - cfg.padding as isize;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                for kx in 0..kw {
                    let ix = (ox * cfg.stride + kx * cfg.dilation) as isize - cfg.padding as isize;
                    if ix < 0 || ix >= w as isize {
                        continue;
                    }
                    let j = (ci * kh + ky) * kw + kx;
                    data[j * m + r] = plane[iy as usize * w + ix as usize];
                }
            }
        }
    }
    ColMatrix { rows: m, cols, data }
}

/// The rows `rows` of a `(n, d)` row-major matrix, column-major.
pub(crate) fn columns(x: &[f32], d: usize, rows: &[usize]) -> ColMatrix {
    let m = rows.len();
    let mut data = vec![0f32; d * m];
    for (r, &i) in rows.iter().enumerate() {
        for (j, &v) in x[i * d..(i + 1) * d].iter().enumerate() {
            data[j * m + r] = v;
        }
    }
    ColMatrix {
        rows: m,
        cols: d,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// The unfolded patches times the flattened kernel reproduce candle's convolution.
    #[test]
    fn unfold_matches_convolution() -> anyhow::Result<()> {
        let dev = Device::Cpu;
        let (n, c, h, w, out, k, groups) = (2, 4, 7, 6, 6, 3, 2);
        let cfg = ConvCfg {
            stride: 2,
            padding: 1,
            dilation: 1,
            groups,
        };
        let x: Vec<f32> = (0..n * c * h * w).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
        let wt: Vec<f32> = (0..out * (c / groups) * k * k)
            .map(|i| ((i * 13) % 7) as f32 - 3.0)
            .collect();
        let xt = Tensor::from_vec(x.clone(), (n, c, h, w), &dev)?;
        let wt_t = Tensor::from_vec(wt.clone(), (out, c / groups, k, k), &dev)?;
        let y = xt.conv2d(&wt_t, cfg.padding, cfg.stride, cfg.dilation, cfg.groups)?;
        let (_, _, oh, ow) = y.dims4()?;
        assert_eq!((oh, ow), (conv_out(h, k, cfg), conv_out(w, k, cfg)));
        let yv = y.flatten_all()?.to_vec1::<f32>()?;
        let rows: Vec<usize> = (0..n * oh * ow).collect();
        let cin_g = c / groups;
        let per = cin_g * k * k;
        for g in 0..groups {
            let m = unfold(&x, [n, c, h, w], cfg, (k, k), g, cin_g, &rows);
            for o in g * (out / groups)..(g + 1) * (out / groups) {
                for (r, &pos) in rows.iter().enumerate() {
                    let v: f32 = (0..per).map(|j| m.col(j)[r] * wt[o * per + j]).sum();
                    let (ni, rest) = (pos / (oh * ow), pos % (oh * ow));
                    let want = yv[(ni * out + o) * oh * ow + rest];
                    assert!((v - want).abs() < 1e-4, "{v} vs {want}");
                }
            }
        }
        Ok(())
    }
}
