//! `mqtts://` with a CA file and credentials: the service connects to a Mosquitto that
//! listens with TLS only and wants a user name and password (certificates made by openssl
//! for the test).

#![allow(clippy::disallowed_methods)]

#[path = "service/harness.rs"]
mod harness;
#[path = "service/standin.rs"]
mod standin;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{free_port, scratch, Server, ServerSetup};

fn run(cmd: &mut Command) {
    let o = cmd.output().expect("runs");
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn connects_to_a_tls_broker_with_a_password() {
    let Some(bin) = std::env::var("FUOTA_MOSQUITTO")
        .ok()
        .filter(|b| !b.is_empty())
    else {
        eprintln!("skipped: FUOTA_MOSQUITTO is not set (scripts/services sets it)");
        return;
    };
    let dir = scratch("tls");
    let d = |f: &str| dir.join(f).to_string_lossy().to_string();
    run(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=fuota test CA",
        "-keyout",
        &d("ca.key"),
        "-out",
        &d("ca.pem"),
    ]));
    run(Command::new("openssl").args([
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &d("server.key"),
        "-out",
        &d("server.csr"),
    ]));
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(Command::new("openssl").args([
        "x509",
        "-req",
        "-in",
        &d("server.csr"),
        "-CA",
        &d("ca.pem"),
        "-CAkey",
        &d("ca.key"),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &d("san.ext"),
        "-out",
        &d("server.pem"),
    ]));
    let passwd = std::path::Path::new(&bin).with_file_name("mosquitto_passwd");
    let passwd = if passwd.exists() {
        passwd
    } else {
        "mosquitto_passwd".into()
    };
    run(Command::new(passwd).args(["-b", "-c", &d("passwords"), "fuota", "s3cret"]));
    let port = free_port();
    std::fs::write(
        dir.join("mosquitto.conf"),
        format!(
            // As root, mosquitto would drop to its own user, who cannot read the key.
            "listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
             allow_anonymous false\npassword_file {}\npersistence false\nuser root\n",
            d("ca.pem"),
            d("server.pem"),
            d("server.key"),
            d("passwords")
        ),
    )
    .unwrap();
    let mut broker = Command::new(&bin)
        .arg("-c")
        .arg(dir.join("mosquitto.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto starts");
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "mosquitto did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("mqtts://127.0.0.1:{port}");
    let db = format!("sqlite://{}", d("fuota.db"));
    let mut setup = ServerSetup::new(dir.clone(), &url, &db, "tls");
    setup.mqtt_extra = format!(
        "username = \"fuota\"\npassword = \"s3cret\"\nca_file = \"{}\"",
        d("ca.pem")
    );
    let server = Server::start(setup.clone());
    let t0 = Instant::now();
    while !server
        .log_text()
        .contains(&format!("MQTT connected to {url}"))
    {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(server);
    // A wrong password is refused by the broker: the service keeps trying, never connected.
    setup.mqtt_extra = setup.mqtt_extra.replace("s3cret", "wrong");
    setup.port = free_port();
    setup.dir = dir.join("wrong-password");
    std::fs::create_dir_all(&setup.dir).unwrap();
    let server = Server::start(setup);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !server.log_text().contains("MQTT connected"),
        "{}",
        server.log_text()
    );
    drop(server);
    let _ = broker.kill();
    let _ = broker.wait();
}
