//! The prost codec with small buffers. tonic reserves 8 KiB per direction per
//! call by default; our messages are a few hundred bytes. It matters for
//! `Subscribe`: each open stream keeps its encode buffer, so 10,000
//! subscribers held about 80 MiB of them. Larger messages still work: the
//! buffers grow as needed.

use std::any::TypeId;
use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

use crate::model::error::SendError;

const BUFFER_BYTES: usize = 1024;
/// tonic's default: how much a stream may encode before yielding.
const YIELD_THRESHOLD: usize = 32 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = PrescannedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        PrescannedDecoder(ProstCodec::<T, U>::raw_decoder(BufferSettings::new(
            BUFFER_BYTES,
            YIELD_THRESHOLD,
        )))
    }
}

/// prost's decoder, after a count of a `SendRequest`'s lists on the wire
/// (see [`super::from_pb::prescan_send_request`]): a list over its limit
/// is refused before decoding allocates for it.
pub struct PrescannedDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default + 'static> Decoder for PrescannedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        if TypeId::of::<U>() == TypeId::of::<super::pb::SendRequest>() {
            // The buffer holds the whole message, in one piece.
            use bytes::Buf;
            super::from_pb::prescan_send_request(src.chunk())
                .map_err(|v| Status::from(SendError::InvalidRequest(v)))?;
        }
        self.0.decode(src)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
