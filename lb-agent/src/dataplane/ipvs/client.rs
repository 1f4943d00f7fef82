//! A blocking generic netlink socket speaking the kernel's IPVS family: each request is
//! sent with an acknowledgement asked for and answered before the call returns, so the
//! `Dataplane` methods stay synchronous like the XDP ones (a request takes microseconds).

use std::io;

use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::GenlMessage;
use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr};

use super::genl::{self, Dest, IpvsMessage, Service};

#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    #[error("opening a generic netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("the kernel has no IPVS (generic netlink family IPVS not found; is the ip_vs module loaded?)")]
    NoIpvs,
    #[error("IPVS request {cmd}: {source}")]
    Request {
        cmd: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("IPVS answer to {cmd} unreadable: {why}")]
    Decode { cmd: &'static str, why: String },
}

pub struct Ipvs {
    socket: Socket,
    family: u16,
    seq: u32,
}

fn cmd_name(cmd: u8) -> &'static str {
    match cmd {
        genl::CMD_NEW_SERVICE => "NEW_SERVICE",
        genl::CMD_SET_SERVICE => "SET_SERVICE",
        genl::CMD_DEL_SERVICE => "DEL_SERVICE",
        genl::CMD_GET_SERVICE => "GET_SERVICE",
        genl::CMD_NEW_DEST => "NEW_DEST",
        genl::CMD_SET_DEST => "SET_DEST",
        genl::CMD_DEL_DEST => "DEL_DEST",
        genl::CMD_GET_DEST => "GET_DEST",
        _ => "GET_FAMILY",
    }
}

impl Ipvs {
    /// Opens the socket and resolves the IPVS family; `NoIpvs` where the kernel has none.
    pub fn open() -> Result<Self, IpvsError> {
        let mut socket = Socket::new(NETLINK_GENERIC).map_err(IpvsError::Socket)?;
        socket.bind_auto().map_err(IpvsError::Socket)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(IpvsError::Socket)?;
        let mut ipvs = Ipvs { socket, family: 0, seq: 0 };
        let ask = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(genl::FAMILY_NAME.into())],
        });
        let answers = ipvs.exchange(ask, NLM_F_REQUEST, "GET_FAMILY").map_err(|e| match e {
            IpvsError::Request { source, .. } if source.raw_os_error() == Some(libc::ENOENT) => IpvsError::NoIpvs,
            e => e,
        })?;
        let id = answers.iter().flat_map(|m: &GenlMessage<GenlCtrl>| &m.payload.nlas).find_map(|a| match a {
            GenlCtrlAttrs::FamilyId(id) => Some(*id),
            _ => None,
        });
        ipvs.family = id.ok_or(IpvsError::NoIpvs)?;
        Ok(ipvs)
    }

    /// Sends one request and reads every answer up to its acknowledgement (or the end of
    /// a dump).
    fn exchange<P>(&mut self, payload: P, flags: u16, cmd: &'static str) -> Result<Vec<P>, IpvsError>
    where
        P: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug + Into<NetlinkPayload<P>>,
    {
        let err = |source| IpvsError::Request { cmd, source };
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags | NLM_F_ACK;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(header, payload.into());
        msg.finalize();
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(err)?;
        let mut out = Vec::new();
        let mut rx: Vec<u8> = Vec::with_capacity(64 * 1024);
        loop {
            rx.clear();
            self.socket.recv(&mut rx, 0).map_err(err)?;
            let mut offset = 0;
            while offset < rx.len() {
                let answer = NetlinkMessage::<P>::deserialize(&rx[offset..])
                    .map_err(|e| IpvsError::Decode { cmd, why: e.to_string() })?;
                let len = answer.header.length as usize;
                offset += len.max(1).next_multiple_of(4);
                if answer.header.sequence_number != self.seq {
                    continue;
                }
                match answer.payload {
                    NetlinkPayload::InnerMessage(p) => out.push(p),
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(code) => Err(err(io::Error::from_raw_os_error(-code.get()))),
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn request(&mut self, m: IpvsMessage, flags: u16) -> Result<Vec<IpvsMessage>, IpvsError> {
        let cmd = cmd_name(m.cmd);
        let mut g = GenlMessage::from_payload(m);
        g.set_resolved_family_id(self.family);
        let answers = self.exchange(g, NLM_F_REQUEST | flags, cmd)?;
        Ok(answers.into_iter().map(|g| g.payload).collect())
    }

    /// Every virtual service in this network namespace.
    pub fn services(&mut self) -> Result<Vec<Service>, IpvsError> {
        let m = IpvsMessage { cmd: genl::CMD_GET_SERVICE, ..Default::default() };
        Ok(self.request(m, NLM_F_DUMP)?.into_iter().filter_map(|m| m.service).collect())
    }

    /// The destinations of `service`.
    pub fn dests(&mut self, service: &Service) -> Result<Vec<Dest>, IpvsError> {
        let m = IpvsMessage { cmd: genl::CMD_GET_DEST, service: Some(service.clone()), dest: None };
        Ok(self.request(m, NLM_F_DUMP)?.into_iter().filter_map(|m| m.dest).collect())
    }

    /// Runs one service or destination command (NEW, SET, DEL).
    pub fn run(&mut self, cmd: u8, service: &Service, dest: Option<&Dest>) -> Result<(), IpvsError> {
        let m = IpvsMessage { cmd, service: Some(service.clone()), dest: dest.cloned() };
        self.request(m, 0).map(|_| ())
    }
}
