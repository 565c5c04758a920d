//! `tmctl auth init`: nkey identities for monitors, managers, operators and
//! subscribers, and the nats-server authorization block granting each its
//! role's subjects (`bus_schema::auth`).
//!
//! The directory holds one seed file per identity, `<role>-<id>.nk` (mode
//! 0600), and `auth.conf`. Seeds already there are kept: running it again
//! with more identities adds them, and `auth.conf` always lists every seed
//! file in the directory.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use bus_schema::Role;
use bus_schema::auth::{self, Identity};

use crate::{BAD_INPUT, Failure, fail};

/// What `auth init` takes.
#[derive(clap::Args, Debug)]
pub(crate) struct InitArgs {
    /// Directory of the seed files and `auth.conf` (created, mode 0700).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// A monitor, by its address (repeatable): its identity is bound to
    /// that address, its id is the address with `.` and `:` as `-`
    /// (`10.9.0.1` → `10-9-0-1`; giving that id works too). It answers
    /// `tm.v1.mon.<id>.*` and publishes only its own results, events and
    /// liveness record.
    #[arg(long = "monitor", value_name = "ADDRESS")]
    monitors: Vec<String>,
    /// A manager id (repeatable): sends monitor commands, answers
    /// `tm.v1.mgr.<id>.*`, publishes only its own reports.
    #[arg(long = "manager", value_name = "ID")]
    managers: Vec<String>,
    /// An operator name (repeatable): what tmctl does.
    #[arg(long = "operator", value_name = "NAME")]
    operators: Vec<String>,
    /// A subscriber name (repeatable): reads results, events and reports.
    #[arg(long = "subscriber", value_name = "NAME")]
    subscribers: Vec<String>,
    /// A viewer name (repeatable): what a subscriber reads plus the
    /// topology, monitors, deployments and managers — a read-only
    /// `tm-console`. Changes nothing.
    #[arg(long = "viewer", value_name = "NAME")]
    viewers: Vec<String>,
    /// The admin name (default `admin`; an admin identity is always
    /// made): the only identity that creates streams and buckets
    /// (`tmctl setup`).
    #[arg(long = "admin", value_name = "NAME", default_value = "admin")]
    admin: String,
}

/// A monitor's id from `--monitor`: an IP address becomes its id; an id
/// must be one an address gives.
fn monitor_id(value: &str) -> Result<String, Failure> {
    if value.parse::<std::net::IpAddr>().is_ok() {
        return Ok(bus_schema::id_from_address(value));
    }
    if bus_schema::address_of_id(value).is_some() {
        return Ok(value.to_owned());
    }
    Err(fail(
        BAD_INPUT,
        anyhow::anyhow!(
            "--monitor {value:?}: not an IP address; a monitor's identity is bound to its address (e.g. --monitor 10.9.0.1)"
        ),
    ))
}

pub(crate) use bus_schema::auth::identity_of_seed_file;

/// The seed file of an identity.
fn seed_path(dir: &Path, role: Role, id: &str) -> PathBuf {
    dir.join(format!("{}-{id}.nk", role.as_str()))
}

/// Reads the seed at `path`; its public key.
fn public_key_of(path: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let seed = auth::seed_in(&text)
        .with_context(|| format!("{}: no nkey user seed (SU…) in it", path.display()))?;
    let key = nkeys::KeyPair::from_seed(seed)
        .with_context(|| format!("{}: not an nkey seed", path.display()))?;
    Ok(key.public_key())
}

/// Creates the seed file of a new identity (never overwriting one).
fn create_seed(path: &Path, role: Role, id: &str) -> anyhow::Result<String> {
    let key = nkeys::KeyPair::new_user();
    let seed = key.seed().context("cannot encode the seed")?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(
        file,
        "# NATS nkey seed of tm {} {id}: secret, give it only to that process",
        role.as_str()
    )?;
    writeln!(file, "{seed}")?;
    Ok(key.public_key())
}

/// Every identity whose seed file is in `dir`, by role then id.
fn identities_in(dir: &Path) -> anyhow::Result<Vec<(Identity, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        let Some((role, id)) = identity_of_seed_file(&path) else {
            continue;
        };
        let public_key = public_key_of(&path)?;
        out.push((
            Identity {
                role,
                id,
                public_key,
            },
            path,
        ));
    }
    out.sort_by(|(a, _), (b, _)| (a.role.as_str(), &a.id).cmp(&(b.role.as_str(), &b.id)));
    Ok(out)
}

/// `tmctl auth init`.
pub(crate) fn init(args: &InitArgs, json: bool) -> Result<(), Failure> {
    let monitors = args
        .monitors
        .iter()
        .map(|m| monitor_id(m))
        .collect::<Result<Vec<_>, _>>()?;
    let admins = vec![args.admin.clone()];
    let wanted: Vec<(Role, &String)> = [
        (Role::Monitor, &monitors),
        (Role::Manager, &args.managers),
        (Role::Operator, &args.operators),
        (Role::Subscriber, &args.subscribers),
        (Role::Viewer, &args.viewers),
        (Role::Admin, &admins),
    ]
    .into_iter()
    .flat_map(|(role, ids)| ids.iter().map(move |id| (role, id)))
    .collect();
    for (role, id) in &wanted {
        bus_schema::validate_token(&format!("--{}", role.as_str()), id)
            .map_err(|e| fail(BAD_INPUT, e))?;
    }
    let dir = &args.out;
    let named = [
        &args.monitors,
        &args.managers,
        &args.operators,
        &args.subscribers,
        &args.viewers,
    ]
    .iter()
    .any(|l| !l.is_empty());
    let known = dir.exists()
        && identities_in(dir)?
            .iter()
            .any(|(i, _)| i.role != Role::Admin);
    if !named && !known {
        return Err(fail(
            BAD_INPUT,
            anyhow::anyhow!(
                "no identities: name some with --monitor, --manager, --operator or --subscriber"
            ),
        ));
    }
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--out {}: cannot create it", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("--out {}: cannot restrict it to 0700", dir.display()))?;
    }
    let mut created = Vec::new();
    for (role, id) in &wanted {
        let path = seed_path(dir, *role, id);
        if !path.exists() {
            create_seed(&path, *role, id)?;
            created.push(path);
        }
    }
    let identities = identities_in(dir)?;
    if identities.is_empty() {
        return Err(fail(
            BAD_INPUT,
            anyhow::anyhow!(
                "no identities: name some with --monitor, --manager, --operator or --subscriber"
            ),
        ));
    }
    let list: Vec<Identity> = identities.iter().map(|(i, _)| i.clone()).collect();
    let config = auth::server_config(&list).map_err(|e| fail(BAD_INPUT, e))?;
    let conf = dir.join("auth.conf");
    let tmp = dir.join(".auth.conf.tmp");
    std::fs::write(&tmp, config).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &conf).with_context(|| format!("cannot write {}", conf.display()))?;
    if json {
        let rows: Vec<_> = identities
            .iter()
            .map(|(i, path)| {
                serde_json::json!({
                    "role": i.role.as_str(),
                    "id": i.id,
                    "public_key": i.public_key,
                    "seed_file": path.display().to_string(),
                    "new": created.contains(path),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"config": conf.display().to_string(), "identities": rows})
        );
    } else {
        println!("{:<10} {:<16} {:<56} seed file", "role", "id", "public key");
        for (i, path) in &identities {
            let new = if created.contains(path) { " (new)" } else { "" };
            println!(
                "{:<10} {:<16} {:<56} {}{new}",
                i.role.as_str(),
                i.id,
                i.public_key,
                path.display()
            );
        }
        eprintln!(
            "{} written: add `include \"{}\"` to the nats-server config; run `tmctl setup --nats-creds {}` \
             once to create the streams and buckets; give each process its seed file (monitor \
             `nats_credentials`, manager and tmctl `--nats-creds`)",
            conf.display(),
            conf.display(),
            seed_path(dir, Role::Admin, &args.admin).display()
        );
    }
    Ok(())
}
