//! What the machine is, read from /proc and /sys only (no external tools):
//! CPU, memory, disks, NICs, DMI identity and boot mode. `root` is `/` on
//! a machine, or a fake tree in tests.

use serde_json::{Value, json};
use std::path::Path;

fn read(root: &Path, p: &str) -> Option<String> {
    std::fs::read_to_string(root.join(p.trim_start_matches('/')))
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn names(root: &Path, dir: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(root.join(dir.trim_start_matches('/')))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

/// The inventory as JSON.
pub fn collect(root: &Path) -> Value {
    let cpuinfo = read(root, "/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_owned()));
    let count = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let mem_kib: Option<u64> = read(root, "/proc/meminfo").and_then(|m| {
        m.lines().find_map(|l| l.strip_prefix("MemTotal:").and_then(|v| v.split_whitespace().next()?.parse().ok()))
    });
    let disks: Vec<Value> = names(root, "/sys/block")
        .into_iter()
        .filter(|d| !d.starts_with("loop") && !d.starts_with("ram") && !d.starts_with("zram") && !d.starts_with("dm-"))
        .filter_map(|d| {
            let sectors: u64 = read(root, &format!("/sys/block/{d}/size"))?.parse().ok()?;
            Some(json!({
                "name": d,
                "size_bytes": sectors * 512,
                "model": read(root, &format!("/sys/block/{d}/device/model")),
                "serial": read(root, &format!("/sys/block/{d}/device/serial"))
                    .or_else(|| read(root, &format!("/sys/block/{d}/serial"))),
                "rotational": read(root, &format!("/sys/block/{d}/queue/rotational")).map(|r| r == "1"),
            }))
        })
        .collect();
    let nics: Vec<Value> = names(root, "/sys/class/net")
        .into_iter()
        .filter(|n| n != "lo")
        .filter_map(|n| {
            let base = format!("/sys/class/net/{n}");
            let mac = read(root, &format!("{base}/address"))?;
            let driver = std::fs::read_link(root.join(format!("{base}/device/driver").trim_start_matches('/')))
                .ok()
                .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()));
            Some(json!({"name": n, "mac": mac, "driver": driver, "link": read(root, &format!("{base}/operstate")),
                "speed_mbps": read(root, &format!("{base}/speed")).and_then(|s| s.parse::<i64>().ok()).filter(|s| *s > 0)}))
        })
        .collect();
    let dmi = |f: &str| read(root, &format!("/sys/class/dmi/id/{f}"));
    json!({
        "cpu": {"model": model, "count": count},
        "memory_bytes": mem_kib.map(|k| k * 1024),
        "disks": disks,
        "nics": nics,
        "system": {"uuid": dmi("product_uuid"), "serial": dmi("product_serial"), "vendor": dmi("sys_vendor"),
            "product": dmi("product_name")},
        "boot_mode": if root.join("sys/firmware/efi").exists() { "uefi" } else { "bios" },
        "arch": std::env::consts::ARCH,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_machine_from_its_proc_and_sys() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let w = |p: &str, s: &str| {
            let f = r.join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, s).unwrap();
        };
        w(
            "proc/cpuinfo",
            "processor\t: 0\nmodel name\t: QEMU Virtual CPU\n\nprocessor\t: 1\nmodel name\t: QEMU Virtual CPU\n",
        );
        w("proc/meminfo", "MemTotal:        2048000 kB\nMemFree: 1 kB\n");
        w("sys/block/vda/size", "41943040\n");
        w("sys/block/vda/serial", "disk-serial-1\n");
        w("sys/block/loop0/size", "8\n");
        w("sys/class/net/eth0/address", "52:54:00:12:34:56\n");
        w("sys/class/net/eth0/operstate", "up\n");
        w("sys/class/net/lo/address", "00:00:00:00:00:00\n");
        w("sys/class/dmi/id/product_uuid", "4c4c4544-0000-1000-8000-000000000001\n");
        std::fs::create_dir_all(r.join("sys/firmware/efi")).unwrap();
        let inv = collect(r);
        assert_eq!(inv["cpu"], json!({"model": "QEMU Virtual CPU", "count": 2}));
        assert_eq!(inv["memory_bytes"], 2048000u64 * 1024);
        assert_eq!(inv["disks"].as_array().unwrap().len(), 1);
        assert_eq!(inv["disks"][0]["size_bytes"], 41943040u64 * 512);
        assert_eq!(inv["disks"][0]["serial"], "disk-serial-1");
        assert_eq!(
            inv["nics"],
            json!([{"name": "eth0", "mac": "52:54:00:12:34:56", "driver": null, "link": "up", "speed_mbps": null}])
        );
        assert_eq!(inv["system"]["uuid"], "4c4c4544-0000-1000-8000-000000000001");
        assert_eq!(inv["boot_mode"], "uefi");
    }

    #[test]
    fn this_machine_reads_without_errors() {
        let inv = collect(Path::new("/"));
        assert!(inv["cpu"]["count"].as_u64().unwrap() >= 1);
        assert!(inv["memory_bytes"].as_u64().unwrap() > 0);
    }
}
