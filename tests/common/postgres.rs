//! A real PostgreSQL server for the team-mode tests: Debian's package (`postgresql`, which
//! `scripts/test` installs), a fresh cluster in a temporary directory, listening on a free
//! port of 127.0.0.1 only (its unix socket inside the directory), stopped and removed on drop.
//!
//! initdb refuses to run as root, and the tests run as root in CI: then the cluster belongs
//! to the `postgres` system user (the package creates it) and every server program runs
//! through `runuser -u postgres --`.
//!
//! The server has a superuser `postgres` (trusted on the unix socket only, for set-up) and a
//! login role `mandate` with a password (scram-sha-256 over TCP), owner of the database
//! `mandate`: what a daemon's `[store]` connects as.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use mandate::store::{PgOptions, PgPassword, PgTls};

pub const USER: &str = "mandate";
pub const DB: &str = "mandate";

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    password: String,
    running: bool,
    /// With `start_tls`: the CA that signed the server's certificate.
    ca_file: Option<PathBuf>,
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// The newest installed server's `bin` directory.
fn server_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b).unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server in /usr/lib/postgresql/*/bin: run ./scripts/test (or apt-get install postgresql)"
        )
    })
}

fn chown_postgres(path: &Path) {
    let out = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chown postgres {}: {out:?}",
        path.display()
    );
}

fn check(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (the CLI) is needed for the TLS tests");
    check(&format!("openssl {}", args.join(" ")), out);
}

/// A CA (`NAME.pem`, `NAME.key`) in `dir`.
fn make_ca(dir: &Path, name: &str) {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
        dir,
    );
}

impl Postgres {
    /// A server without TLS (`sslmode=disable` on 127.0.0.1).
    pub fn start() -> Postgres {
        Postgres::boot(false)
    }

    /// A server with TLS on (a certificate for 127.0.0.1 from a CA made for it, `ca_file()`);
    /// plain connections are still accepted.
    pub fn start_tls() -> Postgres {
        Postgres::boot(true)
    }

    fn boot(tls: bool) -> Postgres {
        let bin = server_bin();
        let dir = tempfile::Builder::new()
            .prefix("mandate-pg")
            .tempdir()
            .unwrap();
        // Others (the postgres user) may pass through, not list or write.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let password = format!(
            "pw-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let mut pg = Postgres {
            port: super::free_port(),
            bin,
            password,
            running: false,
            ca_file: None,
            dir,
        };
        for d in ["data", "run", "secrets", "tls"] {
            std::fs::create_dir(pg.dir.path().join(d)).unwrap();
        }
        std::fs::set_permissions(pg.data(), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(
            pg.dir.path().join("secrets"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        let pw = pg.password_file();
        std::fs::write(&pw, format!("{}\n", pg.password)).unwrap();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        if tls {
            pg.make_certificates();
        }
        if is_root() {
            for d in ["data", "run", "tls"] {
                chown_postgres(&pg.dir.path().join(d));
            }
        }
        let out = pg
            .server_cmd("initdb")
            .arg("-D")
            .arg(pg.data())
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .output()
            .unwrap();
        check("initdb", out);
        // No fsync (tests), but synchronous commits: `stop` is a crash (immediate), and a
        // committed change must survive it (the kernel keeps the WAL without fsync).
        let mut conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nfsync = off\nfull_page_writes = off\nmax_connections = 200\n",
            pg.port,
            pg.run().display()
        );
        if tls {
            let t = pg.dir.path().join("tls");
            conf.push_str(&format!(
                "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
                t.join("server.pem").display(),
                t.join("server.key").display()
            ));
        }
        let auto = pg.data().join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
        text.push_str(&conf);
        std::fs::write(&auto, text).unwrap();
        pg.start_again();
        pg.psql(
            "postgres",
            &format!("CREATE ROLE {USER} LOGIN PASSWORD '{}'", pg.password),
        );
        pg.psql("postgres", &format!("CREATE DATABASE {DB} OWNER {USER}"));
        pg
    }

    fn make_certificates(&mut self) {
        let t = self.dir.path().join("tls");
        make_ca(&t, "ca");
        make_ca(&t, "other-ca");
        openssl(
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
            &t,
        );
        std::fs::write(
            t.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
            &t,
        );
        std::fs::set_permissions(t.join("server.key"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        // The CAs the daemon reads sit with the password file (the daemon's user's files).
        for ca in ["ca.pem", "other-ca.pem"] {
            std::fs::copy(t.join(ca), self.dir.path().join("secrets").join(ca)).unwrap();
        }
        self.ca_file = Some(self.dir.path().join("secrets/ca.pem"));
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// One of the server's programs, as the postgres user when we are root.
    fn server_cmd(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// Stops the server (immediately, like a crash); `start_again` brings it back on the
    /// same port with the same data.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let out = self
            .server_cmd("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .output()
            .unwrap();
        check("pg_ctl stop", out);
        self.running = false;
    }

    /// Starts the (stopped) server, waiting until it accepts connections (at most 30 s).
    pub fn start_again(&mut self) {
        if self.running {
            return;
        }
        let log = self.run().join("server.log");
        let out = self
            .server_cmd("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "30", "start"])
            .output()
            .unwrap();
        if !out.status.success() {
            panic!(
                "PostgreSQL did not start within 30 s on 127.0.0.1:{}: {}\n{}\nserver log:\n{}",
                self.port,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        self.running = true;
        // pg_ctl -w waits for the postmaster; wait for TCP too.
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "PostgreSQL is not accepting connections on 127.0.0.1:{}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs SQL as the superuser in database `db` (over the unix socket); its output
    /// (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .arg("-h")
            .arg(self.run())
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db])
            .args(["-v", "ON_ERROR_STOP=1", "-X", "-q", "-At", "-c", sql])
            .output()
            .unwrap();
        check(&format!("psql {sql:?}"), out)
    }

    /// A new empty database owned by `mandate`; options to reach it.
    pub fn create_database(&self, name: &str) -> PgOptions {
        self.psql("postgres", &format!("CREATE DATABASE {name} OWNER {USER}"));
        let mut o = self.options();
        o.dbname = name.to_owned();
        o
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The password of the role `mandate` (for tests that check it never shows).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// A file (0600, the test's user's) holding the password, for `password_file`.
    pub fn password_file(&self) -> PathBuf {
        self.dir.path().join("secrets/pg.pass")
    }

    /// With `start_tls`: the CA that signed the server's certificate.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// With `start_tls`: a CA that did not sign it.
    pub fn other_ca_file(&self) -> PathBuf {
        self.dir.path().join("secrets/other-ca.pem")
    }

    /// For broker.toml's `[store] url`: `sslmode=disable` on 127.0.0.1, or `verify-full`
    /// (with `ca_file`) for a TLS server.
    pub fn url(&self) -> String {
        let mode = if self.ca_file.is_some() {
            "verify-full"
        } else {
            "disable"
        };
        format!(
            "postgres://{USER}@127.0.0.1:{}/{DB}?sslmode={mode}",
            self.port
        )
    }

    /// The whole `[store]` table for broker.toml (url, password_file, ca_file for TLS).
    pub fn store_toml(&self) -> String {
        let mut t = format!(
            "[store]\nurl = \"{}\"\npassword_file = \"{}\"\n",
            self.url(),
            self.password_file().display()
        );
        if let Some(ca) = &self.ca_file {
            t.push_str(&format!("ca_file = \"{}\"\n", ca.display()));
        }
        t
    }

    /// `PgStore` options for the database `mandate` (TLS verified against `ca_file()` for a
    /// TLS server), the password from `password_file()`, short timeouts.
    pub fn options(&self) -> PgOptions {
        PgOptions {
            host: "127.0.0.1".into(),
            port: self.port,
            dbname: DB.into(),
            user: USER.into(),
            tls: match &self.ca_file {
                Some(ca) => PgTls::VerifyFull {
                    ca_file: ca.clone(),
                },
                None => PgTls::Disable,
            },
            password: PgPassword::File(self.password_file()),
            connect_timeout: Duration::from_secs(3),
            statement_timeout: Duration::from_secs(10),
            pool: 4,
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self
                .server_cmd("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "-t", "10", "stop"])
                .output();
        }
    }
}
