//! Making a client's link-layer address known before a reply is unicast
//! to it (RFC 2131 §4.1): a client with no address yet cannot answer ARP,
//! so the kernel is told its Ethernet address for the address being given,
//! with the `SIOCSARP` ioctl (as dnsmasq does), and the entry is removed
//! (`SIOCDARP`) once the reply is out. It needs `CAP_NET_ADMIN`;
//! without it the caller broadcasts instead. This is the one module of the
//! crate with `unsafe`: the ioctl call itself.
#![allow(unsafe_code)]

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

/// Sets (or replaces) the ARP entry `ip` → `mac` on `interface`; `socket`
/// is any open socket.
pub fn set(socket: &impl AsRawFd, interface: &str, ip: Ipv4Addr, mac: [u8; 6]) -> std::io::Result<()> {
    arp(socket, libc::SIOCSARP, interface, ip, Some(mac))
}

/// Removes the ARP entry for `ip` on `interface`.
pub fn remove(socket: &impl AsRawFd, interface: &str, ip: Ipv4Addr) -> std::io::Result<()> {
    arp(socket, libc::SIOCDARP, interface, ip, None)
}

fn arp(
    socket: &impl AsRawFd,
    request: libc::c_ulong,
    interface: &str,
    ip: Ipv4Addr,
    mac: Option<[u8; 6]>,
) -> std::io::Result<()> {
    let name = interface.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "bad interface name"));
    }
    let empty = libc::sockaddr { sa_family: 0, sa_data: [0; 14] };
    let mut req =
        libc::arpreq { arp_pa: empty, arp_ha: empty, arp_flags: libc::ATF_COM, arp_netmask: empty, arp_dev: [0; 16] };
    // A sockaddr_in laid over sockaddr: family, port (0), then the address.
    req.arp_pa.sa_family = libc::AF_INET as libc::sa_family_t;
    for (d, s) in req.arp_pa.sa_data[2..6].iter_mut().zip(ip.octets()) {
        *d = s as libc::c_char;
    }
    req.arp_ha.sa_family = libc::ARPHRD_ETHER;
    for (d, s) in req.arp_ha.sa_data.iter_mut().zip(mac.unwrap_or_default()) {
        *d = s as libc::c_char;
    }
    for (d, s) in req.arp_dev.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // SAFETY: `req` is a fully initialised `arpreq` that outlives the call;
    // SIOCSARP and SIOCDARP only read it, and the descriptor is open for as long as
    // `socket` is borrowed.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), request as _, &req as *const libc::arpreq) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_interface_names_before_the_kernel_sees_them() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for bad in ["", "a-name-longer-than-15", "nul\0"] {
            let e = set(&s, bad, Ipv4Addr::new(10, 0, 0, 9), [2, 0, 0, 0, 0, 9]).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{bad:?}");
        }
        // An interface that does not exist is the kernel's error, not a panic.
        assert!(set(&s, "plinth-none0", Ipv4Addr::new(10, 0, 0, 9), [2, 0, 0, 0, 0, 9]).is_err());
    }
}
