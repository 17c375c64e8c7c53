//! Stage counters that list themselves: each stage declares its counters once, with the
//! prefix their names get in `/metrics` and the summary line, so no list elsewhere names
//! every field by hand.

/// `counters! { /// doc  pub struct XStats("x") { /// doc  pub a, pub b, } }` declares the
/// struct (all `u64`) and `XStats::pairs()`: `[("x_a", a), ("x_b", b)]`.
macro_rules! counters {
    (
        $(#[$meta:meta])*
        pub struct $name:ident($prefix:literal) {
            $( $(#[$fmeta:meta])* pub $field:ident, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: u64, )*
        }

        impl $name {
            /// Every counter, named `<prefix>_<field>`.
            pub fn pairs(&self) -> Vec<(&'static str, u64)> {
                vec![$( (concat!($prefix, "_", stringify!($field)), self.$field), )*]
            }
        }
    };
}

pub(crate) use counters;

#[cfg(test)]
mod tests {
    counters! {
        /// Two counters.
        pub struct DemoStats("demo") {
            /// The first.
            pub first,
            pub second,
        }
    }

    #[test]
    fn counters_are_named_by_prefix_and_field_in_declaration_order() {
        let s = DemoStats {
            first: 1,
            second: 2,
        };
        assert_eq!(s.pairs(), vec![("demo_first", 1), ("demo_second", 2)]);
    }
}
