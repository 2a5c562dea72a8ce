//! Untrusted bytes as a blob exchange request and as a response
//! (`trellis_proto::blobwire`): never panic, and anything accepted is canonical (re-encoding
//! gives back the exact input). Seeds: `proto/src/blobwire.rs` writes them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_proto::blobwire::{BlobRequest, BlobResponse};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = BlobRequest::from_bytes(data) {
        assert_eq!(request.to_bytes(), data, "accepted a non-canonical request");
    }
    if let Ok(response) = BlobResponse::from_bytes(data) {
        assert_eq!(response.to_bytes(), data, "accepted a non-canonical response");
        if let BlobResponse::Manifest { chunks, .. } = &response {
            assert_eq!(chunks.len() * 32 + 13, data.len());
        }
    }
});
