//! The Emotion-LLaMA encoders at full fidelity, in the HF / LAVIS tensor layouts so real checkpoints load
//! as they are: HuBERT (audio), ViT-MAE (local face view), VideoMAE (temporal view), EVA ViT-g (global).
//! They are frozen feature extractors, so they use candle's fused ops.

pub mod eva_vit;
pub mod hubert;
pub mod videomae;
pub mod vit_mae;
