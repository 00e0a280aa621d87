//! Peak resident set size, from `/proc/<pid>/status` (`VmHWM`).

use anyhow::{Context, Result};

fn vm_hwm(status: &str) -> Result<u64> {
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM line in /proc status")?;
    let kb: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .context("parsing VmHWM")?;
    Ok(kb * 1024)
}

/// Peak RSS of this process, in bytes.
pub fn peak_rss_self() -> Result<u64> {
    vm_hwm(&std::fs::read_to_string("/proc/self/status")?)
}

/// Peak RSS of process `pid`, in bytes.
pub fn peak_rss_of(pid: u32) -> Result<u64> {
    vm_hwm(&std::fs::read_to_string(format!("/proc/{pid}/status"))?)
}

/// Bytes allocated on disk for everything under `path` (what `du` counts).
pub fn disk_bytes(path: &std::path::Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return Ok(meta.blocks() * 512);
    }
    let mut total = meta.blocks() * 512;
    for entry in std::fs::read_dir(path)? {
        total += disk_bytes(&entry?.path())?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_vm_hwm() {
        assert_eq!(
            super::vm_hwm("Name:\tx\nVmHWM:\t  2048 kB\n").unwrap(),
            2048 * 1024
        );
        assert!(super::peak_rss_self().unwrap() > 0);
    }
}
