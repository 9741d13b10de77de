//! Published ports of a sandbox with a network policy: the helper binds
//! each host port on 127.0.0.1 (only loopback, as pasta does) and hands
//! the listening socket to the forwarder, which accepts on it and relays
//! into the sandbox (lockbox_net::forwarder::ingress).
//!
//! Bound here, not in the forwarder: the port is taken before the
//! sandbox runs anything (a port in use fails the create with a clear
//! error, not a forwarder that dies later), and the forwarder's system
//! call filter needs no `bind` to arbitrary ports or `listen` for it; it
//! only accepts on what it was given.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

use lockbox_net::forwarder::Published;
use lockbox_protocol::{ErrorCode, PortSpec};

/// Published ports per sandbox: one listening socket and one accept task
/// each in the forwarder.
pub const MAX_PORTS: usize = 64;
const FLAG: &str = "--publish";

/// A host port bound for the sandbox, and the guest port it goes to.
pub struct Bound {
    listener: TcpListener,
    guest: u16,
}

impl Bound {
    pub fn fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }
}

/// Binds `127.0.0.1:<host>` for each port. The error names the port and
/// why (in use, privileged) with the code the caller reports.
pub fn bind(ports: &[PortSpec]) -> Result<Vec<Bound>, (ErrorCode, String)> {
    if ports.len() > MAX_PORTS {
        return Err((
            ErrorCode::InvalidArgument,
            format!(
                "{} published ports: at most {MAX_PORTS} with a network policy",
                ports.len()
            ),
        ));
    }
    ports
        .iter()
        .map(|p| {
            let at = SocketAddrV4::new(Ipv4Addr::LOCALHOST, p.host);
            match TcpListener::bind(at) {
                Ok(listener) => Ok(Bound {
                    listener,
                    guest: p.guest,
                }),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err((
                    ErrorCode::AlreadyExists,
                    format!("published port: host port {at} is already in use"),
                )),
                Err(e) => {
                    let code = e
                        .raw_os_error()
                        .map(ErrorCode::from_errno)
                        .unwrap_or(ErrorCode::Internal);
                    Err((code, format!("published port: bind {at}: {e}")))
                }
            }
        })
        .collect()
}

/// The forwarder's arguments for `bound`: `--publish FD:GUEST_PORT` each.
pub fn args(bound: &[Bound]) -> Vec<String> {
    bound
        .iter()
        .flat_map(|b| [FLAG.to_string(), format!("{}:{}", b.fd(), b.guest)])
        .collect()
}

/// In the forwarder: the published ports its arguments name, relayed to
/// `guest:<port>`. Each fd must be open, not one of `taken`, and a
/// listening TCP socket (the helper's, inherited).
pub fn parse(args: &[String], guest: Ipv4Addr, taken: &[RawFd]) -> Result<Vec<Published>, String> {
    let mut out = Vec::new();
    let mut seen: Vec<RawFd> = taken.to_vec();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a != FLAG {
            continue;
        }
        let v = it.next().ok_or(format!("{FLAG} needs FD:PORT"))?;
        let (fd, port) = v
            .split_once(':')
            .and_then(|(f, p)| Some((f.parse::<RawFd>().ok()?, p.parse::<u16>().ok()?)))
            .filter(|(f, p)| *f > 2 && *p > 0)
            .ok_or(format!("{FLAG} {v}: want FD:PORT"))?;
        if seen.contains(&fd) || !is_listening_tcp(fd) {
            return Err(format!("{FLAG} {v}: not a listening TCP socket of ours"));
        }
        if out.len() == MAX_PORTS {
            return Err(format!("more than {MAX_PORTS} published ports"));
        }
        seen.push(fd);
        // SAFETY: checked open, a listening socket, and named once; it was
        // handed to this process to own.
        let listener = unsafe { TcpListener::from_raw_fd(fd) };
        out.push(Published {
            listener,
            guest: SocketAddrV4::new(guest, port),
        });
    }
    Ok(out)
}

fn is_listening_tcp(fd: RawFd) -> bool {
    let opt = |name: libc::c_int| -> Option<libc::c_int> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt into a c_int of the given length.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (r == 0).then_some(v)
    };
    opt(libc::SO_ACCEPTCONN) == Some(1)
        && opt(libc::SO_DOMAIN) == Some(libc::AF_INET)
        && opt(libc::SO_PROTOCOL) == Some(libc::IPPROTO_TCP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_refused_by_name() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let Err((code, msg)) = bind(&[PortSpec {
            host: port,
            guest: 80,
        }]) else {
            panic!("bound a port already in use");
        };
        assert_eq!(code, ErrorCode::AlreadyExists);
        assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
        drop(held);
        // Control: the same port, free again, binds.
        let b = bind(&[PortSpec {
            host: port,
            guest: 80,
        }])
        .unwrap();
        assert_eq!(b[0].listener.local_addr().unwrap().port(), port);
    }

    #[test]
    fn only_listening_tcp_sockets_are_taken() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let guest = Ipv4Addr::new(10, 0, 2, 100);
        let arg = |fd: RawFd| vec![FLAG.to_string(), format!("{fd}:8080")];
        assert!(parse(&arg(u.as_raw_fd()), guest, &[]).is_err());
        assert!(parse(&arg(l.as_raw_fd()), guest, &[l.as_raw_fd()]).is_err());
        assert!(parse(&[FLAG.to_string(), "x:1".into()], guest, &[]).is_err());
        // Control: the listener itself is taken (and owned from here on).
        let fd = std::os::fd::IntoRawFd::into_raw_fd(l);
        let p = parse(&arg(fd), guest, &[]).unwrap();
        assert_eq!(p[0].guest, SocketAddrV4::new(guest, 8080));
    }
}
