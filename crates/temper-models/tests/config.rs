//! Model configurations: what makes two of them the same model.

use temper_core::Normalization;
use temper_models::{ModelConfig, ModelKind};

#[test]
fn a_default_normalization_equals_the_same_one_spelled_out() -> anyhow::Result<()> {
    let implicit = ModelConfig::new(ModelKind::SmallCnn, 10).check()?;
    let mut spelled = ModelConfig::new(ModelKind::SmallCnn, 10);
    spelled.normalization = Some(Normalization::identity(1));
    let spelled = spelled.check()?;
    assert_ne!(implicit, spelled, "the configurations differ as written");
    assert!(implicit.same_model(&spelled) && spelled.same_model(&implicit));

    let mut other = ModelConfig::new(ModelKind::SmallCnn, 10);
    other.normalization = Some(Normalization {
        mean: vec![0.5],
        std: vec![0.5],
    });
    assert!(
        !implicit.same_model(&other.check()?),
        "a different normalization is another model"
    );
    let mut wider = ModelConfig::new(ModelKind::SmallCnn, 10);
    wider.width = 2.0;
    assert!(
        !implicit.same_model(&wider.check()?),
        "another width is another model"
    );
    Ok(())
}
