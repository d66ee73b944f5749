//! `harden`: a pre-trained checkpoint to a robust, quantized model with its evidence.
//!
//! 1. Adversarial fine-tuning of the checkpoint (temper-train's `finetune` method, PGD
//!    examples, slow-start-fast-decay schedule by default) into `OUT/finetune`.
//! 2. For each requested grid, the quantized model of the fine-tuned weights: post-training
//!    GPFQ (pruning ternary quantization for `ptq`), or, with `qat_epochs > 0`, a short
//!    quantization-aware adversarial fine-tune through the quantizer ([`crate::qat`]) into
//!    `OUT/qat-<grid>`, exported with the rounding it trained through. Each is packed into
//!    `OUT/models/<grid>.safetensors`.
//! 3. The robustness x bit-width matrix: clean accuracy, robust accuracy under each attack
//!    run *through* the quantizer, and each attack group's worst case (AutoAttack as the
//!    worst case over its components), all by `temper_eval::evaluate` via
//!    [`temper_quant::sweep::sweep_models`], as `temper quant sweep` computes them.
//!
//! Runs already in `OUT` with the same configuration are reused (a finished run is read
//! back, an interrupted one resumed); a run there with another configuration is an error
//! rather than a silent mix.

use crate::qat::Qat;
use crate::report::{HardenReport, ModelFile};
use crate::{Error, Result};
use candle_core::Device;
use std::path::{Path, PathBuf};
use temper_attacks::spec::{AttackSettings, AttackSpec};
use temper_core::Classifier;
use temper_eval::{NamedAttack, Threat};
use temper_quant::qat::QatParams;
use temper_quant::sweep::{sweep_models, AttackGroup, SweepParams, SweepRow};
use temper_quant::{GpfqParams, Method, QuantModel, QuantParams};
use temper_train::{files, Method as TrainMethod, RunOptions, TrainConfig, TrainReport};

/// Unchecked settings of the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct HardenParams {
    /// The fine-tuning run: method `finetune`, `weights` the pre-trained checkpoint; its data
    /// set, threat model (eps) and seed are the pipeline's.
    pub finetune: TrainConfig,
    /// The grids, one matrix row each: their width, granularity, first and last layers' width,
    /// and rounding (round to nearest, or pruning ternary quantization for `ptq`).
    pub grids: Vec<QatParams>,
    /// Epochs of quantization-aware adversarial fine-tuning per grid; 0 quantizes after
    /// training (GPFQ; pruning ternary quantization for `ptq`).
    pub qat_epochs: usize,
    /// The learning-rate schedule of quantization-aware fine-tuning.
    pub qat_lr_schedule: String,
    /// Calibration images for GPFQ, drawn (seeded) from the train split.
    pub calib: usize,
    /// Test images evaluated (the first ones of the test split; all when `None`).
    pub limit: Option<usize>,
    /// Images per evaluation batch.
    pub batch_size: usize,
}

impl HardenParams {
    /// The pipeline's defaults around a fine-tuning configuration: the grids 8, 4, 2 bits and
    /// ternary, post-training GPFQ with 512 calibration images, quantization-aware runs (when
    /// asked for) at a constant learning rate of 0.005, every test image, batches of 250.
    pub fn new(finetune: TrainConfig) -> Self {
        HardenParams {
            finetune,
            grids: ["8", "4", "2", "ternary"]
                .into_iter()
                .map(QatParams::parse)
                .collect::<std::result::Result<_, _>>()
                .unwrap_or_default(),
            qat_epochs: 0,
            qat_lr_schedule: "constant:lr=0.005".into(),
            calib: 512,
            limit: None,
            batch_size: 250,
        }
    }

    /// Validates every setting before anything runs.
    pub fn check(self) -> Result<ValidHardenParams> {
        if self.finetune.method != TrainMethod::Finetune {
            return Err(Error::param(
                "method",
                "the pipeline fine-tunes (method finetune)",
            ));
        }
        self.finetune.clone().check()?;
        if self.grids.is_empty() {
            return Err(Error::param("bits", "needs at least one bit width"));
        }
        let mut labels = std::collections::HashSet::new();
        for g in &self.grids {
            g.check()?;
            if !labels.insert(grid_label(g)) {
                return Err(Error::param("bits", format!("{} is listed twice", grid_label(g))));
            }
        }
        if self.qat_epochs > 0 {
            // The same configuration as each quantization-aware run, on weights that exist.
            self.qat_config(&self.grids[0], self.finetune.weights.clone())?
                .check()?;
        } else if self.calib == 0 && self.grids.iter().any(|g| g.method == Method::Rtn) {
            return Err(Error::param(
                "calib",
                "GPFQ needs calibration images (at least 1)",
            ));
        }
        if self.limit == Some(0) {
            return Err(Error::param("limit", "must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(Error::param("batch-size", "must be at least 1"));
        }
        Ok(ValidHardenParams(self))
    }

    /// The quantization-aware run of `grid`, starting from `weights`.
    fn qat_config(&self, grid: &QatParams, weights: Option<PathBuf>) -> Result<TrainConfig> {
        let mut c = self.finetune.clone();
        c.weights = weights;
        c.epochs = self.qat_epochs;
        c.lr_schedule = self.qat_lr_schedule.clone();
        c.quantize = Some(grid.check()?.get().to_string());
        Ok(c)
    }
}

/// [`HardenParams`] that passed [`HardenParams::check`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidHardenParams(HardenParams);

impl ValidHardenParams {
    /// The checked settings.
    pub fn get(&self) -> &HardenParams {
        &self.0
    }
}

/// The attacks of a comma-separated list completed with `settings`, and a group for each item
/// that stands for several attacks (`autoattack` for its components).
pub fn attacks(list: &str, settings: &AttackSettings) -> Result<(Vec<NamedAttack>, Vec<AttackGroup>)> {
    let mut named: Vec<NamedAttack> = Vec::new();
    let mut groups = Vec::new();
    for item in list.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(Error::param(
                "attacks",
                format!("'{list}' has an empty attack name"),
            ));
        }
        let specs = AttackSpec::parse_list(item)?;
        if specs.len() > 1 {
            groups.push(AttackGroup {
                name: item.to_string(),
                members: specs.iter().map(|s| s.text.clone()).collect(),
            });
        }
        for s in specs {
            if named.iter().all(|(n, _)| *n != s.text) {
                named.push((s.text.clone(), s.build(settings)?));
            }
        }
    }
    Ok((named, groups))
}

/// A file name for a grid: `8-bit`, `ternary`, `ptq`.
fn grid_label(g: &QatParams) -> String {
    match g.method {
        Method::PrunedTernary { .. } => "ptq".into(),
        _ => g.scheme.label().replace(' ', "-"),
    }
}

/// Runs `cfg` into `dir`, or reuses the run there when it has the same configuration.
fn run_or_reuse(
    cfg: TrainConfig,
    dir: &Path,
    device: &Device,
    say: &mut dyn FnMut(&str),
) -> Result<TrainReport> {
    let opts = || -> Result<RunOptions> {
        let mut o = RunOptions::new(temper_train::render::default_renderer(0, 0, 20));
        o.layer_transform = Qat::for_config(&cfg)?;
        Ok(o)
    };
    if dir.join(files::CONFIG).is_file() {
        let recorded = crate::qat::run_config(dir)?;
        if recorded != cfg {
            return Err(Error::OutDir {
                path: dir.to_path_buf(),
                reason: "holds a run with other settings; choose another --out or remove it".into(),
            });
        }
        say(&format!("reusing the run in {}", dir.display()));
        return Ok(temper_train::resume(dir, device, opts()?)?);
    }
    let o = opts()?;
    Ok(temper_train::train(cfg.check()?, dir, device, o)?)
}

/// Runs the pipeline into `out` (created) on `device`, with the attacks of [`attacks`] (their
/// budget is `params.finetune.threat.eps`, L-inf). `say` receives progress lines.
pub fn harden(
    params: &ValidHardenParams,
    attack_list: &str,
    out: &Path,
    device: &Device,
    say: &mut dyn FnMut(&str),
) -> Result<HardenReport> {
    let start = std::time::Instant::now();
    let p = params.get();
    let ft = &p.finetune;
    let model_cfg = ft.model.clone().check()?;
    let eps = ft.threat.eps;
    let settings = AttackSettings {
        eps,
        ..AttackSettings::default()
    };
    let (named, groups) = attacks(attack_list, &settings)?;
    let test = temper_data::load(&ft.dataset, ft.data_dir.as_deref(), temper_data::Split::Test)?;
    let test = match p.limit {
        Some(n) if n < test.len() => test.subset(&(0..n).collect::<Vec<_>>())?,
        _ => test,
    };
    std::fs::create_dir_all(out).map_err(|e| Error::Io {
        op: "create",
        path: out.to_path_buf(),
        source: e,
    })?;

    // 1. Adversarial fine-tuning.
    say(&format!(
        "[1/3] adversarial fine-tuning: {} epochs, PGD-{} at eps {}, {}",
        ft.epochs,
        ft.threat.steps,
        temper_eval::fmt_eps(eps),
        ft.lr_schedule
    ));
    let ft_dir = out.join("finetune");
    let ft_run = run_or_reuse(ft.clone(), &ft_dir, device, say)?;
    let robust_w = ft_dir.join(files::LAST);
    let (robust, _) = temper_models::build_from_file(
        &model_cfg,
        &robust_w,
        temper_core::weights::Strictness::Strict,
        device,
    )?;

    // 2. Quantization, row by row inside the sweep.
    let qat = p.qat_epochs > 0;
    let calib = if qat || p.calib == 0 {
        None
    } else {
        let train = temper_data::load(&ft.dataset, ft.data_dir.as_deref(), temper_data::Split::Train)?;
        Some(temper_quant::eval::calibration_images(
            &train,
            p.calib,
            "calibration",
            device,
        )?)
    };
    let how = if qat {
        format!(
            "quantization-aware adversarial fine-tuning of the fine-tuned model through each grid's quantizer \
             ({} epochs, {}, straight-through gradients), exported with the same rounding",
            p.qat_epochs, p.qat_lr_schedule
        )
    } else {
        format!(
            "post-training: GPFQ on {} calibration images (pruning ternary quantization for ptq), BatchNorm folded",
            p.calib
        )
    };
    say(&format!("[2/3] quantization: {how}"));
    let models_dir = out.join("models");
    std::fs::create_dir_all(&models_dir).map_err(|e| Error::Io {
        op: "create",
        path: models_dir.clone(),
        source: e,
    })?;
    // Both the row maker and the row printer talk; never at the same time.
    let say = std::cell::RefCell::new(say);
    let line = |text: &str| (*say.borrow_mut())(text);
    let mut qat_runs: Vec<TrainReport> = Vec::new();
    let mut make = |i: usize| -> temper_quant::Result<QuantModel> {
        let g = &p.grids[i];
        let label = grid_label(g);
        if qat {
            line(&format!("      quantization-aware fine-tuning, {label}"));
            let cfg =
                p.qat_config(g, Some(robust_w.clone()))
                    .map_err(|e| temper_quant::Error::InvalidParam {
                        name: "qat".into(),
                        reason: e.to_string(),
                    })?;
            let dir = out.join(format!("qat-{label}"));
            let fail = |e: Error| temper_quant::Error::InvalidParam {
                name: format!("qat-{label}"),
                reason: e.to_string(),
            };
            let run = run_or_reuse(cfg.clone(), &dir, device, &mut **say.borrow_mut()).map_err(fail)?;
            qat_runs.push(run);
            return crate::qat::export_run(&dir, &cfg, device)
                .map_err(fail)?
                .ok_or_else(|| temper_quant::Error::InvalidParam {
                    name: "qat".into(),
                    reason: "the run recorded no quantizer".into(),
                });
        }
        let method = match g.method {
            Method::Rtn => Method::Gpfq(GpfqParams::default()),
            m => m,
        };
        let qp = QuantParams {
            scheme: g.scheme,
            granularity: g.granularity,
            first_last_bits: g.first_last_bits,
            method,
            batch_size: p.batch_size,
            ..QuantParams::new(g.scheme)
        }
        .check()?;
        let none = candle_core::Tensor::zeros((0, 1, 1, 1), candle_core::DType::F32, device)?;
        temper_quant::quantize(&robust, &model_cfg, calib.as_ref().unwrap_or(&none), &qp)
    };
    let mut files_out: Vec<ModelFile> = vec![ModelFile {
        label: "float".into(),
        path: robust_w.clone(),
        bytes: std::fs::metadata(&robust_w).map(|m| m.len()).unwrap_or(0),
    }];
    line("[3/3] robustness matrix (attacks run through each quantizer)");
    let mut on_row = |row: &SweepRow, q: Option<&QuantModel>| -> temper_quant::Result<()> {
        let mut cells = vec![format!("clean {:.2}%", 100.0 * row.clean)];
        cells.extend(row.robust.iter().map(|(n, v)| format!("{n} {:.2}%", 100.0 * v)));
        cells.extend(row.groups.iter().map(|(n, v)| format!("{n} {:.2}%", 100.0 * v)));
        line(&format!(
            "      {:>8}  {}  [{:.0} s]",
            row.label,
            cells.join("  "),
            start.elapsed().as_secs_f64()
        ));
        if let Some(q) = q {
            let path = models_dir.join(format!("{}.safetensors", row.label.replace(' ', "-")));
            let size = temper_quant::export::save(q, &path)?;
            files_out.push(ModelFile {
                label: row.label.clone(),
                path,
                bytes: size.quantized_bytes,
            });
        }
        Ok(())
    };
    let sweep_params = SweepParams {
        schemes: p.grids.iter().map(|g| g.scheme).collect(),
        quant: QuantParams {
            method: if qat {
                Method::Rtn
            } else {
                Method::Gpfq(GpfqParams::default())
            },
            first_last_bits: p.grids[0].first_last_bits,
            granularity: p.grids[0].granularity,
            fold_batchnorm: !qat,
            ..QuantParams::new(p.grids[0].scheme)
        },
        batch_size: p.batch_size,
        threat: Threat::new(temper_attacks::Norm::Linf, eps)?,
        groups,
    }
    .check()?;
    let n_calib = calib.as_ref().map_or(0, |c| c.dim(0).unwrap_or(0));
    let matrix = sweep_models(
        &robust,
        &test,
        &named,
        &sweep_params,
        n_calib,
        &mut make,
        &mut on_row,
    )?;
    let report = HardenReport::new(
        robust.info().name.clone(),
        ft.weights.clone().unwrap_or_default(),
        ft_run,
        how,
        qat_runs,
        matrix,
        files_out,
        start.elapsed().as_secs_f64(),
    );
    report.write(out)?;
    Ok(report)
}
