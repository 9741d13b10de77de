//! The `methods!` macro: one list of methods becomes the [`Method`] enum
//! (name <-> variant), its one dispatch match, its async forms and, for
//! tests, the typed round trip of a golden file. Each entry names its
//! params and result types; the handler must take and return exactly
//! those, so the table is the ABI's schema.
//!
//! [`Method`]: super::Method

/// `Variant = "name": Params => Result, sync_handler [, async async_handler];`
/// A sync handler is `fn(Params, &CallCtx) -> Result<Result, ApiError>`;
/// an async one `async fn(Params) -> Result<Result, ApiError>` that owns
/// everything it needs (it runs on the runtime with no caller thread).
macro_rules! methods {
    ($(
        $(#[$attr:meta])*
        $variant:ident = $name:literal: $params:ty => $result:ty, $sync:path $(, async $asyn:path)?;
    )*) => {
        /// Every method of the ABI.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum Method {
            $( $(#[$attr])* $variant, )*
        }

        impl Method {
            #[cfg(test)]
            pub(crate) const ALL: &'static [Method] = &[ $( $(#[$attr])* Method::$variant, )* ];

            pub(crate) fn name(self) -> &'static str {
                match self { $( $(#[$attr])* Method::$variant => $name, )* }
            }

            pub(crate) fn from_name(s: &str) -> Option<Method> {
                match s {
                    $( $(#[$attr])* $name => Some(Method::$variant), )*
                    _ => None,
                }
            }

            /// Decodes the params, runs the method on this thread, encodes
            /// the result.
            fn call(self, params: serde_json::Value, ctx: &CallCtx) -> Result<Vec<u8>, ApiError> {
                match self {
                    $( $(#[$attr])* Method::$variant => {
                        let r: $result = $sync(decode::<$params>($name, params)?, ctx)?;
                        encode(&r)
                    } )*
                }
            }

            /// The form `lockbox_submit` runs, if the method has one.
            fn async_form(self) -> Option<AsyncHandler> {
                match self {
                    $( $(#[$attr])* Method::$variant => async_form!($name, $params, $result $(, $asyn)?), )*
                }
            }

            /// Decodes golden params and result into the method's types and
            /// encodes them again; differences are reported.
            #[cfg(test)]
            fn round_trip(
                self,
                params: &serde_json::Value,
                result: &serde_json::Value,
            ) -> Result<(), String> {
                match self {
                    $( $(#[$attr])* Method::$variant => {
                        same::<$params>("params", params)?;
                        same::<$result>("result", result)
                    } )*
                }
            }
        }
    };
}

macro_rules! async_form {
    ($name:literal, $params:ty, $result:ty) => {
        None
    };
    ($name:literal, $params:ty, $result:ty, $asyn:path) => {
        Some(|params| {
            Box::pin(async move {
                let r: $result = $asyn(decode::<$params>($name, params)?).await?;
                encode(&r)
            })
        })
    };
}

pub(super) use {async_form, methods};
