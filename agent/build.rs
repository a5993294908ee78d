//! Records the source commit for `tidemark --version`-style build info in
//! the diagnostics bundle. Without git (a source tarball) it says "unknown".

fn main() {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=TIDEMARK_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=TIDEMARK_TARGET={}", std::env::var("TARGET").unwrap_or_default());
    println!("cargo:rustc-env=TIDEMARK_PROFILE={}", std::env::var("PROFILE").unwrap_or_default());
    for path in ["../.git/HEAD", "../.git/refs/heads"] {
        println!("cargo:rerun-if-changed={path}");
    }
}
