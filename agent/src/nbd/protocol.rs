//! NBD protocol constants and byte-level encoding (fixed newstyle
//! handshake, simple and structured replies). No I/O here: `server.rs`
//! feeds bytes in and writes what these functions produce.
//! Reference: the NBD protocol specification (doc/proto.md in the
//! NetworkBlockDevice/nbd repository).

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
pub const FLAG_NO_ZEROES: u16 = 2;
pub const CLIENT_FLAGS_KNOWN: u32 = 3;

pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;

pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_ERR_UNSUP: u32 = 0x8000_0001;
pub const REP_ERR_POLICY: u32 = 0x8000_0002;
pub const REP_ERR_INVALID: u32 = 0x8000_0003;
pub const REP_ERR_UNKNOWN: u32 = 0x8000_0006;

pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_BLOCK_SIZE: u16 = 3;

pub const TFLAG_HAS_FLAGS: u16 = 1;
pub const TFLAG_READ_ONLY: u16 = 2;
pub const TFLAG_SEND_FLUSH: u16 = 4;
pub const TFLAG_SEND_FUA: u16 = 8;
pub const TFLAG_SEND_TRIM: u16 = 32;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 64;
pub const TFLAG_CAN_MULTI_CONN: u16 = 256;
/// Every flush covers every connection's writes (the log syncs to its
/// newest append), so several connections may share one export.
pub const EXPORT_FLAGS: u16 = TFLAG_HAS_FLAGS
    | TFLAG_SEND_FLUSH
    | TFLAG_SEND_FUA
    | TFLAG_SEND_TRIM
    | TFLAG_SEND_WRITE_ZEROES
    | TFLAG_CAN_MULTI_CONN;
/// A read-only export: no write commands are offered.
pub const READ_ONLY_EXPORT_FLAGS: u16 = TFLAG_HAS_FLAGS | TFLAG_READ_ONLY | TFLAG_SEND_FLUSH | TFLAG_CAN_MULTI_CONN;

pub fn export_flags(writable: bool) -> u16 {
    if writable {
        EXPORT_FLAGS
    } else {
        READ_ONLY_EXPORT_FLAGS
    }
}

pub const CMD_FLAG_FUA: u16 = 1;

pub const REPLY_FLAG_DONE: u16 = 1;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_ERROR: u16 = 0x8001;

/// Largest READ or WRITE payload we accept (what we advertise).
pub const PAYLOAD_BYTES_MAX: u32 = 32 << 20;
pub const BLOCK_SIZE_MIN: u32 = 1;
pub const BLOCK_SIZE_PREFERRED: u32 = 4096;
/// Option payloads beyond this are refused (names are ≤ 4096 bytes).
pub const OPTION_BYTES_MAX: u32 = 64 * 1024;
pub const REQUEST_HEADER_BYTES: usize = 28;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Errno {
    Perm = 1,
    Io = 5,
    Inval = 22,
    NoSpc = 28,
    Overflow = 75,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read,
    Write,
    Disc,
    Flush,
    Trim,
    WriteZeroes,
    Unknown(u16),
}

impl Command {
    fn from_u16(v: u16) -> Self {
        match v {
            0 => Command::Read,
            1 => Command::Write,
            2 => Command::Disc,
            3 => Command::Flush,
            4 => Command::Trim,
            6 => Command::WriteZeroes,
            other => Command::Unknown(other),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: Command,
    pub handle: u64,
    pub offset: u64,
    pub length: u32,
}

impl Request {
    pub fn fua(&self) -> bool {
        self.flags & CMD_FLAG_FUA != 0
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct BadMagic(pub u32);

pub fn parse_request(h: &[u8; REQUEST_HEADER_BYTES]) -> Result<Request, BadMagic> {
    let magic = u32::from_be_bytes(h[0..4].try_into().expect("4"));
    if magic != REQUEST_MAGIC {
        return Err(BadMagic(magic));
    }
    Ok(Request {
        flags: u16::from_be_bytes(h[4..6].try_into().expect("2")),
        command: Command::from_u16(u16::from_be_bytes(h[6..8].try_into().expect("2"))),
        handle: u64::from_be_bytes(h[8..16].try_into().expect("8")),
        offset: u64::from_be_bytes(h[16..24].try_into().expect("8")),
        length: u32::from_be_bytes(h[24..28].try_into().expect("4")),
    })
}

/// Why a request cannot be served, decided before touching any data.
pub fn check_bounds(req: &Request, export_size: u64) -> Result<(), Errno> {
    let end = req.offset.checked_add(req.length as u64).ok_or(Errno::Inval)?;
    match req.command {
        Command::Read | Command::Write if req.length > PAYLOAD_BYTES_MAX => Err(Errno::Overflow),
        Command::Read if end > export_size => Err(Errno::Inval),
        Command::Write | Command::Trim | Command::WriteZeroes if end > export_size => Err(Errno::NoSpc),
        _ => Ok(()),
    }
}

pub fn server_greeting() -> Vec<u8> {
    let mut out = Vec::with_capacity(18);
    out.extend_from_slice(&NBDMAGIC.to_be_bytes());
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    out
}

pub fn option_reply(option: u32, reply_type: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

pub fn info_export(size: u64, flags: u16) -> Vec<u8> {
    let mut d = Vec::with_capacity(12);
    d.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    d.extend_from_slice(&size.to_be_bytes());
    d.extend_from_slice(&flags.to_be_bytes());
    d
}

pub fn info_block_size() -> Vec<u8> {
    let mut d = Vec::with_capacity(14);
    d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    d.extend_from_slice(&BLOCK_SIZE_MIN.to_be_bytes());
    d.extend_from_slice(&BLOCK_SIZE_PREFERRED.to_be_bytes());
    d.extend_from_slice(&PAYLOAD_BYTES_MAX.to_be_bytes());
    d
}

pub fn info_name(name: &str) -> Vec<u8> {
    let mut d = INFO_NAME.to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d
}

pub fn list_entry(name: &str) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d
}

/// The reply to NBD_OPT_EXPORT_NAME (no zero padding: we require NO_ZEROES
/// or send the 124 bytes when the client did not ask for it).
pub fn export_name_reply(size: u64, flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut out = size.to_be_bytes().to_vec();
    out.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        out.extend_from_slice(&[0u8; 124]);
    }
    out
}

/// Parses the payload of NBD_OPT_INFO / NBD_OPT_GO: export name and the
/// information types asked for.
pub fn parse_info_request(data: &[u8]) -> Option<(String, Vec<u16>)> {
    let name_len = u32::from_be_bytes(data.get(0..4)?.try_into().ok()?) as usize;
    let name = std::str::from_utf8(data.get(4..4 + name_len)?).ok()?.to_string();
    let rest = data.get(4 + name_len..)?;
    let count = u16::from_be_bytes(rest.get(0..2)?.try_into().ok()?) as usize;
    let list = rest.get(2..)?;
    if list.len() != count * 2 {
        return None;
    }
    let wanted = list.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
    Some((name, wanted))
}

pub fn simple_reply(handle: u64, error: u32) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..16].copy_from_slice(&handle.to_be_bytes());
    out
}

/// Header of a structured reply chunk; the payload follows.
pub fn structured_header(handle: u64, flags: u16, reply_type: u16, length: u32) -> [u8; 20] {
    let mut out = [0u8; 20];
    out[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&flags.to_be_bytes());
    out[6..8].copy_from_slice(&reply_type.to_be_bytes());
    out[8..16].copy_from_slice(&handle.to_be_bytes());
    out[16..20].copy_from_slice(&length.to_be_bytes());
    out
}

pub fn structured_error(handle: u64, error: Errno, message: &str) -> Vec<u8> {
    let mut payload = (error as u32).to_be_bytes().to_vec();
    payload.extend_from_slice(&(message.len() as u16).to_be_bytes());
    payload.extend_from_slice(message.as_bytes());
    let mut out = structured_header(handle, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, payload.len() as u32).to_vec();
    out.extend_from_slice(&payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(magic: u32, cmd: u16, offset: u64, length: u32) -> [u8; REQUEST_HEADER_BYTES] {
        let mut h = [0u8; REQUEST_HEADER_BYTES];
        h[0..4].copy_from_slice(&magic.to_be_bytes());
        h[6..8].copy_from_slice(&cmd.to_be_bytes());
        h[8..16].copy_from_slice(&42u64.to_be_bytes());
        h[16..24].copy_from_slice(&offset.to_be_bytes());
        h[24..28].copy_from_slice(&length.to_be_bytes());
        h
    }

    #[test]
    fn request_parsing_and_bounds() {
        assert_eq!(parse_request(&header(0xdead_beef, 0, 0, 0)), Err(BadMagic(0xdead_beef)));
        let r = parse_request(&header(REQUEST_MAGIC, 1, 4096, 512)).unwrap();
        assert_eq!((r.command, r.handle, r.offset, r.length), (Command::Write, 42, 4096, 512));
        assert_eq!(check_bounds(&r, 4608), Ok(()));
        assert_eq!(check_bounds(&r, 4607), Err(Errno::NoSpc));
        let big = parse_request(&header(REQUEST_MAGIC, 0, 0, (32 << 20) + 1)).unwrap();
        assert_eq!(check_bounds(&big, u64::MAX), Err(Errno::Overflow));
        let wrap = parse_request(&header(REQUEST_MAGIC, 0, u64::MAX, 2)).unwrap();
        assert_eq!(check_bounds(&wrap, u64::MAX), Err(Errno::Inval));
        assert_eq!(parse_request(&header(REQUEST_MAGIC, 77, 0, 0)).unwrap().command, Command::Unknown(77));
    }

    #[test]
    fn info_request_parsing() {
        let mut d = 3u32.to_be_bytes().to_vec();
        d.extend_from_slice(b"vol");
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&3u16.to_be_bytes());
        assert_eq!(parse_info_request(&d), Some(("vol".into(), vec![3])));
        assert_eq!(parse_info_request(&d[..d.len() - 1]), None);
        assert_eq!(parse_info_request(&[0, 0, 1, 0]), None);
    }
}
