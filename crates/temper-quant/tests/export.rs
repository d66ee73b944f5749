//! Export round trips: a packed file loads back to bit-identical logits, for every scheme, with
//! and without activation grids, on models with and without BatchNorm; sizes shrink with the
//! bit width; malformed files are rejected with the tensor named.

mod common;

use anyhow::Result;
use candle_core::{Device, Tensor};
use common::{calib, fixtures, logits, mnist_cnn, test_set};
use temper_quant::export::{float_bytes, is_quantized, load, load_bytes, save, to_bytes};
use temper_quant::{
    quantize, ActCalibration, ActParams, AlphabetScale, GpfqParams, Granularity, Method, QuantModel,
    QuantParams, WeightScheme,
};

/// Writes `q` to bytes, loads it back and checks that everything, logits included, is equal.
fn round_trip(q: &QuantModel, x: &Tensor) -> Result<usize> {
    let bytes = to_bytes(q)?;
    let back = load_bytes(&bytes, "memory.safetensors".as_ref(), &Device::Cpu)?;
    // Compared without printing: a failure would dump every code.
    assert!(
        back.layers() == q.layers(),
        "quantized layers differ after the round trip"
    );
    assert_eq!(back.quant_info(), q.quant_info());
    let (a, b) = (logits(q, x)?, logits(&back, x)?);
    let d = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    assert_eq!(d, 0.0, "logits changed by {d} after the round trip");
    Ok(bytes.len())
}

#[test]
fn packed_files_load_to_identical_logits() -> Result<()> {
    let (float, cfg) = mnist_cnn()?;
    let x = test_set(Some(64))?.to_batch(&Device::Cpu)?.images;
    let calib = calib(64)?;
    let asym = |bits| WeightScheme::Uniform {
        bits,
        symmetric: false,
    };
    let act = |bits| {
        Some(ActParams {
            bits,
            calibration: ActCalibration::Percentile { percent: 99.9 },
        })
    };
    let cases: Vec<(WeightScheme, Granularity, Option<ActParams>, Option<u8>)> = vec![
        (WeightScheme::bits(8), Granularity::PerChannel, None, None),
        (asym(8), Granularity::PerTensor, act(8), None),
        (WeightScheme::bits(6), Granularity::PerTensor, None, Some(8)),
        (asym(5), Granularity::PerChannel, act(6), Some(8)),
        (WeightScheme::bits(4), Granularity::PerChannel, act(4), Some(8)),
        (WeightScheme::bits(3), Granularity::PerChannel, None, None),
        (WeightScheme::bits(2), Granularity::PerTensor, act(3), None),
        (WeightScheme::Ternary, Granularity::PerChannel, None, Some(8)),
        (WeightScheme::Binary, Granularity::PerChannel, act(8), None),
    ];
    for (scheme, g, a, edges) in cases {
        let mut p = QuantParams::new(scheme);
        p.granularity = g;
        p.act = a;
        p.first_last_bits = edges;
        p.bias_correction = a.is_some();
        let q = quantize(&float, &cfg, &calib, &p.check()?)?;
        round_trip(&q, &x)?;
    }
    // GPFQ codes go through the same path.
    let mut p = QuantParams::new(WeightScheme::bits(3));
    p.method = Method::Gpfq(GpfqParams {
        c: AlphabetScale::Fixed { c: 0.9 },
        max_rows: 1024,
    });
    round_trip(&quantize(&float, &cfg, &calib, &p.check()?)?, &x)?;
    Ok(())
}

#[test]
fn batchnorm_models_round_trip_with_folded_batchnorms() -> Result<()> {
    let dir = fixtures().join("models");
    for (case, kind, width, size) in [
        ("preact_resnet18", "preact-resnet18", 0.0625, 32),
        ("resnet18_cifar", "resnet18", 0.0625, 32),
    ] {
        let mut cfg = temper_models::ModelConfig::new(temper_models::ModelKind::parse(kind)?, 10);
        cfg.width = width;
        cfg.input_size = (size, size);
        cfg.stem = temper_models::Stem::Cifar;
        cfg.normalization = Some(temper_core::Normalization::identity(3));
        let cfg = cfg.check()?;
        let (net, _) = temper_models::build_from_file(
            &cfg,
            dir.join(format!("{case}.safetensors")),
            temper_core::weights::Strictness::Strict,
            &Device::Cpu,
        )?;
        let x = Tensor::rand(0f32, 1f32, (4, 3, size, size), &Device::Cpu)?;
        let mut p = QuantParams::new(WeightScheme::bits(4));
        p.act = Some(ActParams {
            bits: 8,
            calibration: ActCalibration::MinMax,
        });
        p.bias_correction = true;
        let q = quantize(
            &net,
            &cfg,
            &Tensor::rand(0f32, 1f32, (8, 3, size, size), &Device::Cpu)?,
            &p.check()?,
        )?;
        assert!(!q.quant_info().fold.folded.is_empty());
        round_trip(&q, &x)?;
    }
    Ok(())
}

#[test]
fn files_shrink_with_the_bit_width() -> Result<()> {
    let (float, cfg) = mnist_cnn()?;
    let float_size = float_bytes(&float)?;
    let on_disk = std::fs::metadata(fixtures().join("attacks/small_cnn_mnist.safetensors"))?.len();
    // Same tensors, same format: only the metadata may differ.
    assert!(float_size.abs_diff(on_disk) < 256, "{float_size} vs {on_disk}");
    let dir = tempfile::tempdir()?;
    let empty = Tensor::zeros((0, 1, 28, 28), candle_core::DType::F32, &Device::Cpu)?;
    let mut last = u64::MAX;
    for (scheme, min_ratio) in [
        (WeightScheme::bits(8), 3.9),
        (WeightScheme::bits(6), 5.0),
        (WeightScheme::bits(4), 7.5),
        (WeightScheme::bits(3), 9.5),
        (WeightScheme::Ternary, 14.0),
        (WeightScheme::Binary, 25.0),
    ] {
        let mut p = QuantParams::new(scheme);
        p.first_last_bits = None;
        let q = quantize(&float, &cfg, &empty, &p.check()?)?;
        let path = dir.path().join(format!("{}.safetensors", scheme.label()));
        let report = save(&q, &path)?;
        assert_eq!(report.quantized_bytes, std::fs::metadata(&path)?.len());
        assert_eq!(report.float_bytes, float_size);
        assert!(report.ratio() > min_ratio, "{scheme}: ratio {}", report.ratio());
        assert!(report.quantized_bytes < last);
        last = report.quantized_bytes;
        assert!(is_quantized(&path)?);
        let back = load(&path, &Device::Cpu)?;
        assert!(
            back.layers() == q.layers(),
            "{scheme}: layers differ after loading"
        );
        let meta = temper_core::weights::read_metadata(&path)?;
        let desc = &meta["temper.quant:fc1.weight"];
        assert!(desc.contains(&format!("{:?}", scheme.storage_bits())), "{desc}");
    }
    assert!(!is_quantized(
        fixtures().join("attacks/small_cnn_mnist.safetensors")
    )?);
    Ok(())
}

#[test]
fn malformed_files_are_rejected_with_the_tensor_named() -> Result<()> {
    let (float, cfg) = mnist_cnn()?;
    let empty = Tensor::zeros((0, 1, 28, 28), candle_core::DType::F32, &Device::Cpu)?;
    let q = quantize(
        &float,
        &cfg,
        &empty,
        &QuantParams::new(WeightScheme::bits(4)).check()?,
    )?;
    let bytes = to_bytes(&q)?;
    let path = std::path::Path::new("q.safetensors");

    let float_file = std::fs::read(fixtures().join("attacks/small_cnn_mnist.safetensors"))?;
    let e = load_bytes(&float_file, path, &Device::Cpu)
        .expect_err("a float file must be rejected")
        .to_string();
    assert!(e.contains("not a quantized model"), "{e}");

    let e = load_bytes(&bytes[..bytes.len() / 2], path, &Device::Cpu)
        .expect_err("a truncated file must be rejected")
        .to_string();
    assert!(e.contains("q.safetensors"), "{e}");

    // Same-length edit of the header: fc1's recorded shape no longer matches the model.
    let header_len = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + header_len])?;
    assert!(header.contains("[100,1568]"));
    let mut bad = bytes.clone();
    let edited = header.replacen("[100,1568]", "[100,1567]", 1);
    bad[8..8 + header_len].copy_from_slice(edited.as_bytes());
    let e = load_bytes(&bad, path, &Device::Cpu)
        .expect_err("a wrong shape must be rejected")
        .to_string();
    assert!(e.contains("fc1.weight"), "{e}");
    Ok(())
}

/// A crafted file whose recorded model has an absurd input shape is refused with an error
/// naming the size, before anything is allocated (it used to abort the process).
#[test]
fn a_crafted_huge_input_shape_is_an_error() -> Result<()> {
    let (float, cfg) = mnist_cnn()?;
    let q = quantize(
        &float,
        &cfg,
        &calib(8)?,
        &QuantParams::new(WeightScheme::bits(8)).check()?,
    )?;
    let bytes = to_bytes(&q)?;
    let n = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n])?;
    let meta = header
        .get_mut("__metadata__")
        .and_then(|m| m.as_object_mut())
        .ok_or_else(|| anyhow::anyhow!("no metadata"))?;
    let mut model: serde_json::Value = serde_json::from_str(
        meta["temper.quant.model"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no model config"))?,
    )?;
    model["input_size"] = serde_json::json!([65536, 65536]);
    meta.insert(
        "temper.quant.model".into(),
        serde_json::Value::String(model.to_string()),
    );
    let mut text = serde_json::to_string(&header)?;
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let mut crafted = (text.len() as u64).to_le_bytes().to_vec();
    crafted.extend_from_slice(text.as_bytes());
    crafted.extend_from_slice(&bytes[8 + n..]);
    match load_bytes(&crafted, "crafted.safetensors".as_ref(), &Device::Cpu) {
        Ok(_) => panic!("a 65536x65536 input must be refused"),
        Err(e) => assert!(e.to_string().contains("input-size"), "{e}"),
    }
    Ok(())
}
