//! Stage counters that list themselves: each stage declares its counters once, with the
//! prefix their names get in `/metrics` and the summary line, so no list elsewhere names
//! every field by hand.

/// `counters! { /// doc  pub struct XStats("x") { /// doc  pub a, pub b, } }` declares the
/// struct (all `u64`) and `XStats::pairs()`: `[("x_a", a), ("x_b", b)]`. A trailing
/// `with { pub inner: InnerStats, }` embeds other counter structs, whose pairs follow.
macro_rules! counters {
    (
        $(#[$meta:meta])*
        pub struct $name:ident($prefix:literal) {
            $( $(#[$fmeta:meta])* pub $field:ident, )*
        }
        $( with { $( $(#[$nmeta:meta])* pub $nested:ident: $nty:ty, )* } )?
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: u64, )*
            $( $( $(#[$nmeta])* pub $nested: $nty, )* )?
        }

        impl $name {
            /// Every counter, named `<prefix>_<field>`.
            pub fn pairs(&self) -> Vec<(&'static str, u64)> {
                #[allow(unused_mut, reason = "only with nested counters")]
                let mut out = vec![$( (concat!($prefix, "_", stringify!($field)), self.$field), )*];
                $( $( out.extend(self.$nested.pairs()); )* )?
                out
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

    counters! {
        pub struct OuterStats("outer") {
            pub own,
        }
        with {
            pub demo: DemoStats,
        }
    }

    #[test]
    fn counters_are_named_by_prefix_and_field_in_declaration_order() {
        let s = DemoStats {
            first: 1,
            second: 2,
        };
        assert_eq!(s.pairs(), vec![("demo_first", 1), ("demo_second", 2)]);
        let o = OuterStats { own: 3, demo: s };
        assert_eq!(
            o.pairs(),
            vec![("outer_own", 3), ("demo_first", 1), ("demo_second", 2)]
        );
    }
}
