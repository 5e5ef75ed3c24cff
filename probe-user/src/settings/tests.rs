use std::time::Duration;

use super::*;

#[test]
fn listen_addresses() {
    assert_eq!(
        parse_listen("127.0.0.1:9464").unwrap(),
        "127.0.0.1:9464".parse().unwrap()
    );
    assert_eq!(parse_listen("[::1]:1").unwrap().port(), 1);
    assert_eq!(
        parse_listen("localhost:9464").unwrap(),
        "127.0.0.1:9464".parse().unwrap()
    );
    for bad in [
        "",
        "9464",
        ":9464",
        "127.0.0.1",
        "example.org:9464",
        "1.2.3.4:99999",
    ] {
        let err = parse_listen(bad).unwrap_err().to_string();
        assert!(err.contains("use IP:PORT"), "{bad}: {err}");
    }
}

#[test]
fn durations_read_like_people_write_them() {
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
    assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
    assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
    assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
    for bad in ["", "30", "s", "30x", "1..2s", "ms30", "99999999h"] {
        let err = parse_duration(bad).unwrap_err().to_string();
        assert!(err.contains("like 250ms, 30s or 5m"), "{bad}: {err}");
    }
    let err = parse_duration("-1s").unwrap_err().to_string();
    assert!(err.contains("cannot be negative"), "{err}");
}

#[test]
fn quiet_must_be_positive() {
    assert_eq!(parse_quiet("250ms").unwrap(), Duration::from_millis(250));
    let err = parse_quiet("0s").unwrap_err().to_string();
    assert!(err.contains("give a positive duration"), "{err}");
}

#[test]
fn ring_sizes_are_powers_of_two_of_at_least_a_page() {
    assert_eq!(parse_ring_size("4096").unwrap(), 4096);
    assert_eq!(parse_ring_size("4194304").unwrap(), 4 << 20);
    for bad in ["0", "1000", "2048", "4097", "4M", "2147483648"] {
        assert!(parse_ring_size(bad).is_err(), "{bad}");
    }
}

#[test]
fn ports_and_addresses_are_checked() {
    assert_eq!(parse_port("5432").unwrap(), 5432);
    assert!(parse_port("0").is_err());
    assert!(parse_port("65536").is_err());
    assert!(parse_port("pg").is_err());
    assert_eq!(parse_db_addr("[::1]:5432").unwrap().port(), 5432);
    assert!(parse_db_addr("127.0.0.1").is_err());
    assert!(parse_db_addr("db.example:5432").is_err());
}

#[test]
fn pids_are_positive_numbers() {
    assert_eq!(parse_pid("42").unwrap(), 42);
    for bad in ["0", "-3", "abc", "4294967295"] {
        assert!(parse_pid(bad).is_err(), "{bad}");
    }
}
