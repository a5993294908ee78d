//! Unpredictable numbers from the system's randomness (session ids, test
//! failover instances).

pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).expect("system randomness");
    u64::from_le_bytes(b)
}
