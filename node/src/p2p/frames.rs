//! Length-prefixed frames for the peer network's request-response protocols: a `u32`
//! little-endian length, then that many bytes, refused before allocation when over the
//! protocol's limit. [`FrameCodec`] carries a request and a response of any [`FrameMessage`].

use std::io;
use std::marker::PhantomData;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::request_response;
use libp2p::StreamProtocol;
use trellis_proto::codec::{decode, Encode};

fn bad_data(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

/// Bytes of a frame's buffer allocated before they arrive: a peer that announces a large frame
/// and sends nothing (on every stream it may open) holds this much of our memory, not its claim.
const FRAME_BUFFER_AHEAD: usize = 64 * 1024;

/// Reads one frame of at most `max` bytes, its buffer growing as the bytes arrive.
async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut length = [0u8; 4];
    io.read_exact(&mut length).await?;
    let length = u32::from_le_bytes(length) as usize;
    if length > max {
        return Err(bad_data(format!("frame of {length} bytes is over the limit of {max}")));
    }
    let mut buffer = Vec::with_capacity(length.min(FRAME_BUFFER_AHEAD));
    io.take(length as u64).read_to_end(&mut buffer).await?;
    if buffer.len() != length {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("frame cut at {} of {length} bytes", buffer.len()),
        ));
    }
    Ok(buffer)
}

/// Writes one frame and closes the stream's sending side.
async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    io.write_all(&(bytes.len() as u32).to_le_bytes()).await?;
    io.write_all(bytes).await?;
    io.close().await
}

/// A message carried in one frame.
pub trait FrameMessage: Sized + Send + 'static {
    /// The largest frame read for this message: refused before allocation when over.
    const MAX_FRAME: usize;
    fn to_frame(&self) -> Vec<u8>;
    fn from_frame(bytes: &[u8]) -> io::Result<Self>;
}

/// A greeting is small.
impl FrameMessage for trellis_proto::peerwire::Hello {
    const MAX_FRAME: usize = 4096;
    fn to_frame(&self) -> Vec<u8> {
        self.to_bytes()
    }
    fn from_frame(bytes: &[u8]) -> io::Result<Self> {
        decode(bytes).map_err(bad_data)
    }
}

/// Requests of type `Q` and responses of type `R`, one frame each.
pub struct FrameCodec<Q, R>(PhantomData<fn() -> (Q, R)>);

impl<Q, R> Default for FrameCodec<Q, R> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<Q, R> Clone for FrameCodec<Q, R> {
    fn clone(&self) -> Self {
        Self::default()
    }
}

#[async_trait::async_trait]
impl<Q: FrameMessage, R: FrameMessage> request_response::Codec for FrameCodec<Q, R> {
    type Protocol = StreamProtocol;
    type Request = Q;
    type Response = R;

    async fn read_request<T: AsyncRead + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Q> {
        Q::from_frame(&read_frame(io, Q::MAX_FRAME).await?)
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<R> {
        R::from_frame(&read_frame(io, R::MAX_FRAME).await?)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Q,
    ) -> io::Result<()> {
        write_frame(io, &request.to_frame()).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: R,
    ) -> io::Result<()> {
        write_frame(io, &response.to_frame()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(length: u32, body: &[u8]) -> futures::io::Cursor<Vec<u8>> {
        futures::io::Cursor::new([length.to_le_bytes().as_slice(), body].concat())
    }

    #[tokio::test]
    async fn frames_read_back_whole_and_a_short_or_oversized_one_is_refused() {
        let body = vec![9u8; 200_000];
        let read = read_frame(&mut framed(200_000, &body), 200_000).await.unwrap();
        assert_eq!(read, body, "a frame larger than the buffer allocated ahead reads back whole");
        let over = read_frame(&mut framed(200_001, &body), 200_000).await.unwrap_err();
        assert_eq!(over.kind(), io::ErrorKind::InvalidData);
        let cut = read_frame(&mut framed(150_000, &body[..1_000]), 200_000).await.unwrap_err();
        assert_eq!(cut.kind(), io::ErrorKind::UnexpectedEof, "{cut}");
    }
}
