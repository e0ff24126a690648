//! `scripts/gpu-check.sh` on this machine, which has no GPU, with stand-ins: the script must always
//! end within its deadline with a complete summary.json and at most 8 files in its output folder (what
//! a lent GPU machine sends back), and needs no Python for that.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Every check the script plans, in order.
const PLANNED: [&str; 14] = [
    "probe",
    "kernel parity f32",
    "kernel parity bf16",
    "flash attention vs plain",
    "gemm rate",
    "vlmix 50 steps cuda f32",
    "vlmix 50 steps cuda bf16",
    "vlmix loss vs cpu",
    "vlmix 79m",
    "vlmix 1b",
    "pytorch 79m-eager",
    "pytorch 1b-eager",
    "pytorch 79m-compile",
    "vlmix vlm cooldown step",
];

/// Far above what either run takes (seconds), so only a script that ignores its deadline fails.
const SLACK: Duration = Duration::from_secs(60);

fn fresh_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_exe(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Runs the script with `kit` as its kit, a `python3` that fails (no Python) first on the path,
/// and `deadline` seconds; returns its exit code, the summary and the output folder's files.
fn run_script(dir: &Path, kit: &Path, deadline: u64) -> (i32, Value, Vec<String>) {
    let stubs = dir.join("stubs");
    std::fs::create_dir_all(&stubs).unwrap();
    write_exe(&stubs.join("python3"), "#!/bin/sh\nexit 1\n");
    let out = dir.join("out");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/gpu-check.sh");
    let path = format!("{}:{}", stubs.display(), std::env::var("PATH").unwrap_or_default());
    let start = Instant::now();
    let run = Command::new("bash")
        .arg(&script)
        .args(["--deadline", &deadline.to_string()])
        .arg(&out)
        .env("GPU_CHECK_KIT", kit)
        .env("PATH", path)
        .env_remove("OUT")
        .output()
        .expect("running gpu-check.sh");
    let took = start.elapsed();
    let log = format!("{}{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(took < Duration::from_secs(deadline) + SLACK, "took {took:?} with a {deadline} s deadline:\n{log}");
    let summary =
        std::fs::read_to_string(out.join("summary.json")).unwrap_or_else(|e| panic!("summary.json: {e}\n{log}"));
    let summary: Value = serde_json::from_str(&summary).unwrap_or_else(|e| panic!("summary.json: {e}\n{log}"));
    let mut files: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    files.sort();
    (run.status.code().unwrap_or(-1), summary, files)
}

fn rows(summary: &Value) -> &Vec<Value> {
    let rows = summary["checks"].as_array().expect("summary.json has checks");
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, PLANNED, "every planned check, once, in order");
    rows
}

fn no_libcuda() -> bool {
    vlmix_cuda::probe::missing().iter().any(|m| m.starts_with("libcuda.so.1"))
}

const FILES: [&str; 4] = ["details.tgz", "gpu-check.log", "machine.txt", "summary.json"];

#[test]
fn without_a_device_every_check_is_not_run() {
    if !no_libcuda() {
        return; // a GPU machine: the script's real run covers it
    }
    let dir = fresh_dir("gpu-check-no-device");
    let kit = dir.join("kit");
    std::fs::create_dir_all(&kit).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_vlmix-cuda-check"), kit.join("vlmix-cuda-check")).unwrap();
    let (code, summary, files) = run_script(&dir, &kit, 120);
    assert_eq!(files, FILES, "what comes back from $OUT (at most 8 files)");
    assert_eq!(code, 3, "no device: exit 3\n{summary:#}");
    for row in rows(&summary) {
        assert_eq!(row["status"], "not run", "{row}");
        assert!(row["why"].as_str().unwrap().starts_with("no device"), "{row}");
    }
    assert_eq!(summary["not_run"], PLANNED.len());
}

/// A device whose first check hangs: the check is stopped at the deadline's share, every later one
/// is recorded as not run, and the summary is complete.
#[test]
fn a_hanging_check_is_stopped_by_the_deadline() {
    let dir = fresh_dir("gpu-check-hang");
    let kit = dir.join("kit");
    std::fs::create_dir_all(&kit).unwrap();
    // Claims a device, hangs in every check (parity after writing a partial result with a NaN
    // error, which JSON holds as null), and writes the summary with the real binary.
    let partial =
        r#"{"complete": false, "outcomes": [{"output": "add", "error": null, "tolerance": 1e-4, "ok": false}]}"#;
    let stand_in = format!(
        "#!/bin/sh\ncase $1 in\n  probe) exit 0 ;;\n  summary) exec {} \"$@\" ;;\n  parity) for a; do last=$a; done; echo '{partial}' >\"$last\" ;;\nesac\nexec sleep 600\n",
        env!("CARGO_BIN_EXE_vlmix-cuda-check")
    );
    write_exe(&kit.join("vlmix-cuda-check"), &stand_in);
    write_exe(&kit.join("vlmix"), "#!/bin/sh\nexec sleep 600\n");
    std::fs::write(kit.join("cpu-50-steps.json"), "{}").unwrap();
    let (code, summary, files) = run_script(&dir, &kit, 25);
    assert_eq!(files, FILES);
    assert_eq!(code, 1, "a check ran out of time: exit 1\n{summary:#}");
    let rows = rows(&summary);
    assert_eq!(rows[0]["status"], "ok");
    // The partial parity result is read, its null error taken as infinite (the worst output).
    assert_eq!(rows[1]["result"]["worst"]["output"], "add", "{}", rows[1]);
    assert_eq!(rows[1]["result"]["failures"].as_array().map(Vec::len), Some(1));
    assert_eq!(rows[PLANNED.len() - 1]["status"], "pending");
    for row in &rows[1..PLANNED.len() - 1] {
        let timed_out = row["status"] == "failed" && [124, 137].contains(&row["exit_code"].as_i64().unwrap());
        let skipped = row["status"] == "not run" && row["why"] == "deadline reached";
        assert!(timed_out || skipped, "{row}");
    }
}
