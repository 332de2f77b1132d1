//! Who a party is to a call (its role, a supervisor's mode) and what it may
//! do to the call and to the others in it (capabilities): enforced by the call,
//! told to its operator (`participants.capabilities`), defaults by role that a
//! number's configuration can change.

/// What a party is to the call (protocol.md, "Participants").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// The side that called in, or that an operator's dial reached.
    Customer,
    /// An operator handling the call.
    Agent,
    /// An operator monitoring it.
    Supervisor,
    /// A phone (PSTN or SIP) added to the call.
    Phone,
    /// An AI agent.
    Ai,
}

impl Role {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Agent => "agent",
            Role::Supervisor => "supervisor",
            Role::Phone => "phone",
            Role::Ai => "ai",
        }
    }
}

/// A supervisor's mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MonitorMode {
    /// Hears everyone; nobody hears them.
    Listen,
    /// Hears everyone; only the coached party hears them.
    Whisper,
    /// A full participant.
    Barge,
}

impl MonitorMode {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            MonitorMode::Listen => "listen",
            MonitorMode::Whisper => "whisper",
            MonitorMode::Barge => "barge",
        }
    }

    /// From the wire name.
    pub fn parse(s: &str) -> Option<MonitorMode> {
        match s {
            "listen" => Some(MonitorMode::Listen),
            "whisper" => Some(MonitorMode::Whisper),
            "barge" => Some(MonitorMode::Barge),
            _ => None,
        }
    }
}

/// One right.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Capability {
    /// Add a participant (`addParticipant`).
    AddParticipant,
    /// Remove one (`removeParticipant`).
    RemoveParticipant,
    /// Hold another participant.
    HoldParticipant,
    /// End the call for everyone (`end`).
    EndCall,
    /// Switch one's own supervision mode (`monitorMode`).
    SwitchMonitor,
    /// Start, pause, resume and stop the call's recording (`record`).
    Record,
}

impl Capability {
    /// Every capability, in wire order.
    pub const ALL: [Capability; 6] = [
        Capability::AddParticipant,
        Capability::RemoveParticipant,
        Capability::HoldParticipant,
        Capability::EndCall,
        Capability::SwitchMonitor,
        Capability::Record,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::AddParticipant => "add_participant",
            Capability::RemoveParticipant => "remove_participant",
            Capability::HoldParticipant => "hold_participant",
            Capability::EndCall => "end_call",
            Capability::SwitchMonitor => "switch_monitor",
            Capability::Record => "record",
        }
    }

    /// From the wire name.
    pub fn parse(s: &str) -> Option<Capability> {
        Capability::ALL.into_iter().find(|c| c.as_str() == s)
    }

    fn bit(self) -> u8 {
        1 << Capability::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }
}

/// A set of capabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct Capabilities(u8);

impl Capabilities {
    /// None.
    pub const NONE: Capabilities = Capabilities(0);

    /// The set of `caps`.
    pub fn of(caps: &[Capability]) -> Capabilities {
        Capabilities(caps.iter().fold(0, |b, c| b | c.bit()))
    }

    /// Whether `c` is in it.
    pub fn has(self, c: Capability) -> bool {
        self.0 & c.bit() != 0
    }

    /// Wire names, in wire order.
    pub fn names(self) -> Vec<&'static str> {
        Capability::ALL
            .into_iter()
            .filter(|c| self.has(*c))
            .map(Capability::as_str)
            .collect()
    }

    /// With `c` too.
    pub fn with(self, c: Capability) -> Capabilities {
        Capabilities(self.0 | c.bit())
    }
}

/// Capabilities by role, for one number (`[numbers.capabilities]` in the sbc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleCapabilities {
    /// Operators handling the call.
    pub agent: Capabilities,
    /// Supervisors (in `barge` they have the agent's too).
    pub supervisor: Capabilities,
}

impl Default for RoleCapabilities {
    /// An agent may add, remove and hold participants, end the call and
    /// record it; a supervisor may switch its mode and record.
    fn default() -> Self {
        RoleCapabilities {
            agent: Capabilities::of(&[
                Capability::AddParticipant,
                Capability::RemoveParticipant,
                Capability::HoldParticipant,
                Capability::EndCall,
                Capability::Record,
            ]),
            supervisor: Capabilities::of(&[Capability::SwitchMonitor, Capability::Record]),
        }
    }
}

impl RoleCapabilities {
    /// What a party of `role` (a supervisor in `mode`) may do.
    pub fn of(&self, role: Role, mode: Option<MonitorMode>) -> Capabilities {
        match role {
            Role::Agent => self.agent,
            Role::Supervisor if mode == Some(MonitorMode::Barge) => {
                Capabilities(self.supervisor.0 | self.agent.0)
            }
            Role::Supervisor => self.supervisor,
            _ => Capabilities::NONE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_by_role() {
        let d = RoleCapabilities::default();
        assert_eq!(
            d.of(Role::Agent, None).names(),
            [
                "add_participant",
                "remove_participant",
                "hold_participant",
                "end_call",
                "record"
            ]
        );
        assert_eq!(
            d.of(Role::Supervisor, Some(MonitorMode::Listen)).names(),
            ["switch_monitor", "record"]
        );
        assert_eq!(
            d.of(Role::Supervisor, Some(MonitorMode::Barge))
                .names()
                .len(),
            6
        );
        assert!(d.of(Role::Customer, None).names().is_empty());
        for c in Capability::ALL {
            assert_eq!(Capability::parse(c.as_str()), Some(c));
        }
        assert_eq!(Capability::parse("fly"), None);
    }
}
