//! PyTorch checkpoints as they come: a `.pt` written by `torch.save` of a dictionary wrapping
//! a `DataParallel` state dict (`{"state_dict": {"module.conv1.weight": ...}, "epoch": 3}`)
//! loads into the zoo model with the same values as the safetensors file it was made from
//! (tests/fixtures/pytorch/make_fixtures.py).

use anyhow::Result;
use candle_core::{DType, Device};
use std::path::PathBuf;
use temper_core::weights::Strictness;
use temper_core::Classifier;
use temper_models::{build_from_file, ModelConfig, ModelKind};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

#[test]
fn a_wrapped_data_parallel_checkpoint_loads_like_its_safetensors() -> Result<()> {
    let cfg = ModelConfig::new(ModelKind::SmallCnn, 10).check()?;
    let dev = Device::Cpu;
    let (pt, report) = build_from_file(
        &cfg,
        fixtures().join("pytorch/small_cnn_mnist_dp.pt"),
        Strictness::Strict,
        &dev,
    )?;
    let (st, _) = build_from_file(
        &cfg,
        fixtures().join("attacks/small_cnn_mnist.safetensors"),
        Strictness::Strict,
        &dev,
    )?;
    assert_eq!(report.loaded, 8);
    let (a, b) = (pt.params().state_dict()?, st.params().state_dict()?);
    assert_eq!(a.len(), b.len());
    for ((ka, ta), (kb, tb)) in a.iter().zip(&b) {
        assert_eq!(ka, kb);
        let d = (ta.to_dtype(DType::F64)? - tb.to_dtype(DType::F64)?)?
            .abs()?
            .sum_all()?
            .to_scalar::<f64>()?;
        assert_eq!(d, 0.0, "{ka} differs");
    }
    Ok(())
}

#[test]
fn a_pytorch_file_that_is_not_a_checkpoint_is_an_error_naming_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("broken.pt");
    std::fs::write(&bad, b"not a zip")?;
    let cfg = ModelConfig::new(ModelKind::SmallCnn, 10).check()?;
    match build_from_file(&cfg, &bad, Strictness::Strict, &Device::Cpu) {
        Ok(_) => panic!("a broken .pt must not load"),
        Err(e) => assert!(e.to_string().contains("broken.pt"), "{e}"),
    }
    Ok(())
}

/// Temper records a model's normalisation in the files it writes, and a reader takes it from
/// there; a file recording none, loaded into a model with a default normalisation, says which
/// one it assumed.
#[test]
fn files_record_their_normalization_and_unrecorded_ones_are_announced() -> Result<()> {
    use temper_models::{config_for_file, metadata, NormalizationSource, META_CONFIG};
    let dev = Device::Cpu;
    let mut c = ModelConfig::new(ModelKind::PreActResNet18, 10);
    c.width = 0.125;
    let default_cfg = c.clone().check()?;
    c.normalization = Some(temper_core::Normalization::identity(3));
    let raw_cfg = c.check()?;
    let model = temper_models::build(&raw_cfg, &dev)?;
    let dir = tempfile::tempdir()?;
    let recorded = dir.path().join("recorded.safetensors");
    temper_models::save(&model, &raw_cfg, &recorded, DType::F32, &Default::default())?;
    assert!(metadata(&raw_cfg)[META_CONFIG].contains("\"std\":[1.0,1.0,1.0]"));
    let (cfg, source) = config_for_file(&default_cfg, &recorded)?;
    assert_eq!(source, NormalizationSource::File);
    assert!(cfg.normalization().is_identity(), "the file's normalisation wins");

    let bare = dir.path().join("bare.safetensors");
    temper_core::weights::save(model.params(), &bare, DType::F32, &Default::default())?;
    let (cfg, source) = config_for_file(&default_cfg, &bare)?;
    assert_eq!(cfg.normalization(), temper_core::Normalization::cifar10());
    match source {
        NormalizationSource::Assumed(Some(note)) => {
            assert!(
                note.contains("CIFAR-10") && note.contains("--normalize none"),
                "{note}"
            )
        }
        other => panic!("expected an announced assumption, got {other:?}"),
    }
    let (_, source) = config_for_file(&raw_cfg, &bare)?;
    assert_eq!(source, NormalizationSource::Given);
    Ok(())
}
