//! Settings are validated before anything is written to disk (issue 9,
//! case 5): a value out of its documented range makes cmqd exit with an
//! error naming the setting and its range, and leaves the data directory
//! as it was (not created, or still empty). The same holds for the config
//! file. Each range is stated in `cmqd --help`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cmq_integration_tests::broker::cmqd_path;
use cmq_integration_tests::wal_files::run_cmqd_expecting_refusal;

const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Every setting with a value just outside its range, and the words the
/// refusal must contain.
const BAD: &[(&str, &str, &str)] = &[
    ("--segment-bytes", "4194304", "17825792..=4294967296"),
    ("--segment-bytes", "17825791", "17825792..=4294967296"),
    ("--segment-bytes", "4294967297", "17825792..=4294967296"),
    ("--shards", "0", "1..=256"),
    ("--shards", "257", "1..=256"),
    ("--flush-interval-ms", "0", "1..=60000"),
    ("--flush-interval-ms", "60001", "1..=60000"),
    ("--max-connections", "0", "1..=1000000"),
    ("--max-queues", "10000001", "1..=10000000"),
    ("--max-topics", "0", "1..=10000000"),
    ("--push-workers", "257", "1..=256"),
    ("--flush", "sometimes", "--flush"),
];

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn assert_refused(data: &Path, args: &[&str], words: &str) {
    let r = run_cmqd_expecting_refusal(data, args, EXIT_TIMEOUT);
    assert!(!r.started, "cmqd started with {args:?}; its log:\n{}", r.stderr);
    assert!(r.status.is_some_and(|s| !s.success()), "cmqd {args:?} did not exit with an error: {:?}", r.status);
    assert!(r.stderr.contains(words), "the refusal of {args:?} does not say {words:?}:\n{}", r.stderr);
}

#[test]
fn a_bad_setting_is_refused_before_the_data_directory_is_touched() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let missing = tmp.path().join("never-created");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    for (flag, value, words) in BAD {
        assert_refused(&missing, &[flag, value], words);
        assert!(!missing.exists(), "{flag} {value}: the data directory was created");
        assert_refused(&empty, &[flag, value], words);
        assert_eq!(entries(&empty), Vec::<String>::new(), "{flag} {value}: files were written: {:?}", entries(&empty));
    }
}

#[test]
fn a_bad_setting_in_the_config_file_is_refused_the_same_way() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    let file = tmp.path().join("cmqd.toml");
    std::fs::write(&file, "segment_bytes = 4194304\n").expect("write config");
    let cfg = file.to_str().expect("utf-8 path");
    assert_refused(&data, &["--config", cfg], "--segment-bytes: 4194304 is out of range 17825792..=4294967296");
    assert!(!data.exists(), "the data directory was created");
}

#[test]
fn help_states_the_range_of_every_setting() {
    let out = Command::new(cmqd_path()).arg("--help").output().expect("run cmqd --help");
    let help = String::from_utf8_lossy(&out.stdout).split_whitespace().collect::<Vec<_>>().join(" ");
    for (_, _, words) in BAD.iter().filter(|(f, _, _)| *f != "--flush") {
        assert!(help.contains(words), "--help does not state {words}:\n{help}");
    }
}
