//! Envoy's response flags (`%RESPONSE_FLAGS%`: `UH`, `UF`, `URX`, ...), as
//! requests and connections collect them.

/// Envoy's response flags, kept in the order they were set (Envoy prints
/// them that way, e.g. `URX,UF`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Flags {
    order: [u8; 6],
    n: u8,
}

/// One response flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flag(u8);

impl Flags {
    pub const UH: Flag = Flag(0);
    pub const UF: Flag = Flag(1);
    pub const UO: Flag = Flag(2);
    pub const NR: Flag = Flag(3);
    pub const URX: Flag = Flag(4);
    pub const DC: Flag = Flag(5);
    pub const UC: Flag = Flag(6);
    pub const UT: Flag = Flag(7);
    pub const FI: Flag = Flag(8);
    pub const DI: Flag = Flag(9);
    pub const RL: Flag = Flag(10);
    pub const UR: Flag = Flag(11);
    pub const SI: Flag = Flag(12);
    pub const DPE: Flag = Flag(13);
    pub const UMSDR: Flag = Flag(14);
    pub const NC: Flag = Flag(15);

    const NAMES: [&'static str; 16] = [
        "UH", "UF", "UO", "NR", "URX", "DC", "UC", "UT", "FI", "DI", "RL", "UR", "SI", "DPE",
        "UMSDR", "NC",
    ];

    pub fn set(&mut self, f: Flag) {
        if !self.has(f) && (self.n as usize) < self.order.len() {
            self.order[self.n as usize] = f.0;
            self.n += 1;
        }
    }
    pub fn has(&self, f: Flag) -> bool {
        self.order[..self.n as usize].contains(&f.0)
    }
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
    /// `-` when empty, else the letters joined by `,` (Envoy's form).
    pub fn write(&self, out: &mut String) {
        if self.n == 0 {
            out.push('-');
            return;
        }
        for (i, f) in self.order[..self.n as usize].iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(Self::NAMES[*f as usize]);
        }
    }
}
