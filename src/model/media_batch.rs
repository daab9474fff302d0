//! A batch's media as the encoders take them: each pixel view already through its encoder's transform,
//! and the waveforms.

use candle_core::{Result, Tensor};

use crate::media::ViewRole;

/// Decoded media for a batch, as tensors.
#[derive(Debug, Clone)]
pub struct MediaBatch {
    /// Per pixel view, normalised for its encoder: (batch, 3, h, w) for the global view, (batch, frames,
    /// 3, h, w) for the others (face crops with the face front end).
    pub pixels: Vec<(ViewRole, Tensor)>,
    /// (batch, samples) at 16 kHz.
    pub audio: Tensor,
    /// Per row, how many of its samples are the clip's (the rest is padding to the batch's length).
    pub audio_lengths: Vec<usize>,
}

impl MediaBatch {
    /// The pixels of one view.
    pub fn view(&self, role: ViewRole) -> Option<&Tensor> {
        self.pixels.iter().find(|(r, _)| *r == role).map(|(_, t)| t)
    }

    /// A view the model needs, as an error when the batch lacks it.
    pub fn need(&self, role: ViewRole) -> Result<&Tensor> {
        self.view(role).ok_or_else(|| candle_core::Error::Msg(format!("the batch has no {} view (the model's views and the decoder's differ)", role.name())))
    }

    pub fn batch_size(&self) -> Result<usize> {
        self.audio.dim(0)
    }
}
