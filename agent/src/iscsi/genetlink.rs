//! A minimal generic netlink client: enough to look up a family by name
//! and send it one request at a time, waiting for its answer. The kernel
//! NBD driver is configured this way (`kernel_nbd.rs`). Messages are built
//! and parsed here byte by byte; `GenlSocket` only moves them.
//!
//! Layout (native endian, all padded to 4 bytes): `nlmsghdr {len u32,
//! type u16, flags u16, seq u32, pid u32}`, `genlmsghdr {cmd u8, version
//! u8, reserved u16}`, then attributes `nlattr {len u16, type u16}` +
//! payload (a nested attribute holds attributes).

use super::IscsiError;
use crate::io_failure::Doing;
use rustix::fd::OwnedFd;
use rustix::net::netlink::SocketAddrNetlink;

type Result<T, E = IscsiError> = std::result::Result<T, E>;

const NLMSG_HEADER_BYTES: usize = 16;
const GENL_HEADER_BYTES: usize = 4;
const NLA_HEADER_BYTES: usize = 4;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLA_F_NESTED: u16 = 1 << 15;
/// The controller family, which resolves family names.
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
/// Largest answer read in one go (the kernel's default for genetlink).
const RECV_BYTES_MAX: usize = 32 << 10;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A request being built.
pub struct Message {
    buf: Vec<u8>,
    /// Start of each nested attribute still open.
    open: Vec<usize>,
}

impl Message {
    pub fn new(family: u16, cmd: u8, version: u8) -> Message {
        let mut buf = vec![0u8; NLMSG_HEADER_BYTES];
        buf[4..6].copy_from_slice(&family.to_ne_bytes());
        buf[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        buf.extend_from_slice(&[cmd, version, 0, 0]);
        Message { buf, open: Vec::new() }
    }

    fn attr(&mut self, kind: u16, payload: &[u8]) -> &mut Self {
        let len = NLA_HEADER_BYTES + payload.len();
        assert!(len <= u16::MAX as usize, "netlink attribute too long");
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    pub fn u32(&mut self, kind: u16, value: u32) -> &mut Self {
        self.attr(kind, &value.to_ne_bytes())
    }

    pub fn u64(&mut self, kind: u16, value: u64) -> &mut Self {
        self.attr(kind, &value.to_ne_bytes())
    }

    pub fn string(&mut self, kind: u16, value: &str) -> &mut Self {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.attr(kind, &bytes)
    }

    /// Opens a nested attribute; `end_nest` closes it.
    pub fn begin_nest(&mut self, kind: u16) -> &mut Self {
        self.open.push(self.buf.len());
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        self
    }

    pub fn end_nest(&mut self) -> &mut Self {
        let start = self.open.pop().expect("a nest was begun");
        let len = self.buf.len() - start;
        self.buf[start..start + 2].copy_from_slice(&(len as u16).to_ne_bytes());
        self
    }

    /// The finished bytes, with their length and sequence number.
    pub fn finish(mut self, seq: u32) -> Vec<u8> {
        assert!(self.open.is_empty(), "a nested attribute was left open");
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

/// What one message of an answer says.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// A data message: its attributes (type without flags, payload).
    Data(Vec<(u16, Vec<u8>)>),
    /// The acknowledgement that ends an answer.
    Ack,
    /// The request failed with this errno.
    Error(i32),
    Done,
}

/// Parses the messages of one datagram.
pub fn parse_answers(mut bytes: &[u8]) -> Result<Vec<Answer>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < NLMSG_HEADER_BYTES {
            return Err(IscsiError::Malformed(format!("netlink message cut short ({} bytes)", bytes.len())));
        }
        let len = u32::from_ne_bytes(bytes[0..4].try_into().expect("4")) as usize;
        let kind = u16::from_ne_bytes(bytes[4..6].try_into().expect("2"));
        if len < NLMSG_HEADER_BYTES || len > bytes.len() {
            return Err(IscsiError::Malformed(format!(
                "netlink message of {len} bytes in a datagram of {}",
                bytes.len()
            )));
        }
        let body = &bytes[NLMSG_HEADER_BYTES..len];
        out.push(match kind {
            NLMSG_ERROR => {
                let errno = i32::from_ne_bytes(
                    body.get(0..4)
                        .ok_or_else(|| IscsiError::Malformed("netlink error cut short".to_string()))?
                        .try_into()
                        .expect("4"),
                );
                if errno == 0 {
                    Answer::Ack
                } else {
                    Answer::Error(-errno)
                }
            }
            NLMSG_DONE => Answer::Done,
            _ => Answer::Data(parse_attrs(
                body.get(GENL_HEADER_BYTES..)
                    .ok_or_else(|| IscsiError::Malformed("genetlink header cut short".to_string()))?,
            )?),
        });
        bytes = &bytes[align4(len).min(bytes.len())..];
    }
    Ok(out)
}

/// The attributes in `bytes` (one level; a nested one is left as bytes).
pub fn parse_attrs(mut bytes: &[u8]) -> Result<Vec<(u16, Vec<u8>)>> {
    let mut out = Vec::new();
    while bytes.len() >= NLA_HEADER_BYTES {
        let len = u16::from_ne_bytes(bytes[0..2].try_into().expect("2")) as usize;
        let kind = u16::from_ne_bytes(bytes[2..4].try_into().expect("2")) & !NLA_F_NESTED;
        if len < NLA_HEADER_BYTES || len > bytes.len() {
            return Err(IscsiError::Malformed(format!("netlink attribute of {len} bytes in {} left", bytes.len())));
        }
        out.push((kind, bytes[NLA_HEADER_BYTES..len].to_vec()));
        bytes = &bytes[align4(len).min(bytes.len())..];
    }
    Ok(out)
}

/// A generic netlink socket that sends one request at a time.
pub struct GenlSocket {
    fd: OwnedFd,
    seq: u32,
}

impl GenlSocket {
    pub fn open() -> Result<GenlSocket> {
        use rustix::net::{netlink, socket_with, AddressFamily, SocketFlags, SocketType};
        let fd = socket_with(AddressFamily::NETLINK, SocketType::RAW, SocketFlags::CLOEXEC, Some(netlink::GENERIC))
            .doing(|| "opening a generic netlink socket".to_string())?;
        rustix::net::bind(&fd, &SocketAddrNetlink::new(0, 0)).doing(|| "binding the netlink socket".to_string())?;
        Ok(GenlSocket { fd, seq: 1 })
    }

    /// Sends `message` and waits for its acknowledgement; returns the
    /// attributes of the data messages that came before it.
    pub fn request(&mut self, message: Message) -> Result<Vec<(u16, Vec<u8>)>> {
        self.seq += 1;
        let bytes = message.finish(self.seq);
        rustix::net::sendto(&self.fd, &bytes, rustix::net::SendFlags::empty(), &SocketAddrNetlink::new(0, 0))
            .doing(|| "sending a netlink request".to_string())?;
        let mut attrs = Vec::new();
        let mut buf = vec![0u8; RECV_BYTES_MAX];
        loop {
            let (got, _) = rustix::net::recv(&self.fd, &mut buf[..], rustix::net::RecvFlags::empty())
                .doing(|| "reading a netlink answer".to_string())?;
            for answer in parse_answers(&buf[..got])? {
                match answer {
                    Answer::Data(a) => attrs.extend(a),
                    Answer::Ack | Answer::Done => return Ok(attrs),
                    Answer::Error(errno) => return Err(IscsiError::Kernel(std::io::Error::from_raw_os_error(errno))),
                }
            }
        }
    }

    /// The id of the generic netlink family `name` (its module loaded).
    pub fn family(&mut self, name: &str) -> Result<u16> {
        let mut message = Message::new(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1);
        message.string(CTRL_ATTR_FAMILY_NAME, name);
        let attrs = self.request(message).map_err(|e| e.at(format!("looking up netlink family {name:?}")))?;
        let (_, id) = attrs
            .iter()
            .find(|(kind, _)| *kind == CTRL_ATTR_FAMILY_ID)
            .ok_or_else(|| IscsiError::Malformed(format!("netlink family {name:?}: no id in the answer")))?;
        Ok(u16::from_ne_bytes(
            id.get(0..2)
                .ok_or_else(|| IscsiError::Malformed("family id cut short".to_string()))?
                .try_into()
                .expect("2"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_laid_out_as_the_kernel_reads_them() {
        let mut m = Message::new(0x1234, 1, 1);
        m.u32(1, 7).begin_nest(7).begin_nest(1).u32(1, 42).end_nest().end_nest().string(10, "ab");
        let bytes = m.finish(9);
        assert_eq!(u32::from_ne_bytes(bytes[0..4].try_into().unwrap()) as usize, bytes.len());
        assert_eq!(bytes.len() % 4, 0);
        let attrs = parse_attrs(&bytes[NLMSG_HEADER_BYTES + GENL_HEADER_BYTES..]).unwrap();
        assert_eq!(attrs[0], (1, 7u32.to_ne_bytes().to_vec()));
        assert_eq!(attrs[1].0, 7, "the nest flag is not part of the type");
        let inner = parse_attrs(&attrs[1].1).unwrap();
        let innermost = parse_attrs(&inner[0].1).unwrap();
        assert_eq!(innermost, vec![(1, 42u32.to_ne_bytes().to_vec())]);
        assert_eq!(attrs[2], (10, b"ab\0".to_vec()));
    }

    #[test]
    fn answers_parse_and_garbage_is_an_error() {
        let mut ack = vec![0u8; NLMSG_HEADER_BYTES + 4];
        ack[0..4].copy_from_slice(&20u32.to_ne_bytes());
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert_eq!(parse_answers(&ack).unwrap(), vec![Answer::Ack]);
        ack[16..20].copy_from_slice(&(-16i32).to_ne_bytes());
        assert_eq!(parse_answers(&ack).unwrap(), vec![Answer::Error(16)]);
        assert!(parse_answers(&ack[..10]).is_err());
        let mut long = ack.clone();
        long[0..4].copy_from_slice(&400u32.to_ne_bytes());
        assert!(parse_answers(&long).is_err());
        assert!(parse_attrs(&[9, 0, 1, 0]).is_err());
    }
}
