//! Raw HTTP/2 frames for tests that speak to portico below the h2 client
//! (floods, resets, malformed header blocks).

/// One HTTP/2 frame: header and payload.
pub fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The client connection preface, an empty SETTINGS frame, then `frames`.
pub fn preface_then(frames: &[u8]) -> Vec<u8> {
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend(h2_frame(4, 0, 0, &[]));
    bytes.extend_from_slice(frames);
    bytes
}

/// The complete frames in `bytes`: (type, stream id, payload).
pub fn h2_frames(bytes: &[u8]) -> Vec<(u8, u32, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let h = &bytes[at..at + 9];
        let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
        if at + 9 + len > bytes.len() {
            break;
        }
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        out.push((h[3], stream, &bytes[at + 9..at + 9 + len]));
        at += 9 + len;
    }
    out
}
