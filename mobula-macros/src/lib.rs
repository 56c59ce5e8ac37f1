//! Procedural macros of mobula: `#[remote]` turns a function into a task, `#[actor]` on an
//! `impl` block turns a type into an actor class, `#[main]` enters worker mode before `main`.
//!
//! Everything generated refers to the runtime through `::mobula::__private`, so user crates
//! need only depend on `mobula`.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::{
    FnArg, GenericArgument, ImplItem, ImplItemFn, Item, ItemFn, ItemImpl, Pat, PathArguments,
    ReturnType, Signature, Type, Visibility, parse_macro_input,
};

/// What a function returns, as the remote caller sees it.
struct Ret {
    /// The type of the `ObjectRef` (the `Ok` type when fallible).
    value: Type,
    /// The function returns `Result<value, E>`: an `Err` is a task error.
    fallible: bool,
}

fn unit_type() -> Type {
    syn::parse_quote!(())
}

fn analyse_return(ret: &ReturnType) -> Ret {
    let ty = match ret {
        ReturnType::Default => {
            return Ret {
                value: unit_type(),
                fallible: false,
            };
        }
        ReturnType::Type(_, t) => (**t).clone(),
    };
    if let Type::Path(tp) = &ty
        && let Some(last) = tp.path.segments.last()
        && last.ident == "Result"
        && let PathArguments::AngleBracketed(ab) = &last.arguments
        && let Some(GenericArgument::Type(ok)) = ab.args.first()
    {
        return Ret {
            value: ok.clone(),
            fallible: true,
        };
    }
    Ret {
        value: ty,
        fallible: false,
    }
}

/// Typed parameters (excluding any receiver): (binding pattern, type, display name).
fn params(sig: &Signature) -> syn::Result<Vec<(Pat, Type, String)>> {
    let mut out = Vec::new();
    for input in &sig.inputs {
        let FnArg::Typed(pt) = input else { continue };
        if let Type::Reference(r) = &*pt.ty {
            return Err(syn::Error::new(
                r.span(),
                "parameters of remote functions and actor methods must be owned values (they are decoded from MessagePack): take `String`/`Vec<T>` instead of a reference",
            ));
        }
        if let Type::ImplTrait(t) = &*pt.ty {
            return Err(syn::Error::new(
                t.span(),
                "parameters of remote functions and actor methods need concrete types",
            ));
        }
        let name = match &*pt.pat {
            Pat::Ident(pi) => pi.ident.to_string(),
            _ => format!("arg{}", out.len()),
        };
        out.push(((*pt.pat).clone(), (*pt.ty).clone(), name));
    }
    Ok(out)
}

fn reject_generics(sig: &Signature, what: &str) -> syn::Result<()> {
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            sig.generics.span(),
            format!("{what} cannot be generic: every remote item is registered under one id"),
        ));
    }
    Ok(())
}

/// Statements decoding `args` into the parameter bindings.
fn decode_args(ps: &[(Pat, Type, String)]) -> TokenStream2 {
    let n = ps.len();
    let lets = ps.iter().enumerate().map(|(i, (pat, ty, name))| {
        quote! { let #pat: #ty = ::mobula::__private::arg(&__args, #i, #name)?; }
    });
    quote! {
        ::mobula::__private::arity(&__args, #n)?;
        #(#lets)*
    }
}

fn call_bindings(ps: &[(Pat, Type, String)]) -> Vec<TokenStream2> {
    ps.iter()
        .map(|(pat, _, _)| match pat {
            Pat::Ident(pi) => {
                let id = &pi.ident;
                quote!(#id)
            }
            other => quote!(#other),
        })
        .collect()
}

fn encode_ret(fallible: bool, out: TokenStream2) -> TokenStream2 {
    if fallible {
        quote!(::mobula::__private::ret_result(#out))
    } else {
        quote!(::mobula::__private::ret(#out))
    }
}

/// The `(name: impl IntoArg<T>, ...)` parameters of a generated caller and the argument list.
fn caller_params(ps: &[(Pat, Type, String)]) -> (Vec<TokenStream2>, Vec<TokenStream2>) {
    let mut decl = Vec::new();
    let mut conv = Vec::new();
    for (i, (_, ty, _)) in ps.iter().enumerate() {
        let a = format_ident!("__a{}", i);
        decl.push(quote!(#a: impl ::mobula::IntoArg<#ty>));
        conv.push(quote!(::mobula::IntoArg::<#ty>::into_arg(#a).into_raw()));
    }
    (decl, conv)
}

/// Makes a function a remote task.
///
/// ```ignore
/// #[mobula::remote]
/// fn add(a: u64, b: u64) -> u64 { a + b }
/// let r: mobula::ObjectRef<u64> = add::remote(&rt, 1, 2);
/// let r = add::options(mobula::TaskOptions::new().num_cpus(2.0)).remote(&rt, 1, 2);
/// ```
///
/// The function stays callable locally. A module of the same name holds `remote`, `options`
/// and the registration. Arguments may be values or `ObjectRef`s of the parameter types. A
/// function returning `Result<T, E>` gives an `ObjectRef<T>`; its `Err` is a task error.
#[proc_macro_attribute]
pub fn remote(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(
            Span::call_site(),
            "#[remote] takes no arguments; use `f::options(TaskOptions)` per call",
        )
        .to_compile_error()
        .into();
    }
    let f = parse_macro_input!(item as ItemFn);
    match remote_fn(f) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn remote_fn(f: ItemFn) -> syn::Result<TokenStream2> {
    let sig = &f.sig;
    reject_generics(sig, "remote functions")?;
    if let Some(FnArg::Receiver(r)) = sig.inputs.first() {
        return Err(syn::Error::new(
            r.span(),
            "#[remote] is for free functions; put #[mobula::actor] on the impl block for methods",
        ));
    }
    let name = &sig.ident;
    let name_str = name.to_string();
    let vis = match &f.vis {
        Visibility::Inherited => quote!(),
        v => quote!(#v),
    };
    let ps = params(sig)?;
    let ret = analyse_return(&sig.output);
    let rty = &ret.value;
    let decode = decode_args(&ps);
    let binds = call_bindings(&ps);
    let call = if sig.asyncness.is_some() {
        quote!(::mobula::__private::block_on(super::#name(#(#binds),*)))
    } else {
        quote!(super::#name(#(#binds),*))
    };
    let encode = encode_ret(ret.fallible, quote!(__out));
    let (decl, conv) = caller_params(&ps);
    Ok(quote! {
        #f

        #[doc = concat!("Remote calls of [`", #name_str, "`](fn@", #name_str, ").")]
        #[allow(clippy::too_many_arguments, unused_imports, non_snake_case)]
        #vis mod #name {
            use super::*;

            /// Registry id of the function.
            pub const ID: &str = module_path!();
            /// Short name.
            pub const NAME: &str = #name_str;

            #[::mobula::__private::linkme::distributed_slice(::mobula::__private::REMOTE_FUNCTIONS)]
            #[linkme(crate = ::mobula::__private::linkme)]
            static __MOBULA_REGISTRATION: ::mobula::__private::RemoteFunction =
                ::mobula::__private::RemoteFunction { id: ID, name: NAME, invoke: __invoke };

            fn __invoke(
                __args: ::std::vec::Vec<::mobula::__private::Bytes>,
            ) -> ::std::result::Result<::mobula::__private::Encoded, ::mobula::__private::UserError> {
                #decode
                let __out = #call;
                #encode
            }

            /// Submits the task with default options.
            pub fn remote(rt: &::mobula::Runtime, #(#decl),*) -> ::mobula::ObjectRef<#rty> {
                ::mobula::__private::submit_task(rt, ID, NAME, &::mobula::TaskOptions::default(), vec![#(#conv),*])
            }

            /// Per-call options.
            pub fn options(opts: ::mobula::TaskOptions) -> Caller {
                Caller(opts)
            }

            /// A submission with options.
            #[derive(Debug, Clone)]
            pub struct Caller(pub ::mobula::TaskOptions);

            impl Caller {
                /// Submits the task.
                pub fn remote(&self, rt: &::mobula::Runtime, #(#decl),*) -> ::mobula::ObjectRef<#rty> {
                    ::mobula::__private::submit_task(rt, ID, NAME, &self.0, vec![#(#conv),*])
                }
            }
        }
    })
}

/// Makes a type an actor class. Put it on the `impl` block (and, optionally, on the struct).
///
/// ```ignore
/// #[mobula::actor]
/// struct Counter { n: u64 }
///
/// #[mobula::actor]
/// impl Counter {
///     pub fn new(start: u64) -> Self { Counter { n: start } }
///     pub fn incr(&mut self, by: u64) -> u64 { self.n += by; self.n }
/// }
/// let c = Counter::remote(&rt, 0)?;          // ActorHandle<Counter>
/// let r: mobula::ObjectRef<u64> = c.incr(5);
/// ```
///
/// Associated functions returning `Self` (or `Result<Self, E>`) are constructors: `new` is
/// called by `Type::remote(&rt, ..)`, another `ctor` by `Type::remote_ctor(&rt, ..)`; with
/// options, `Type::options(ActorOptions).remote(&rt, ..)`. Every `pub` method taking `&self`
/// or `&mut self` is callable remotely; `async fn` methods make the actor async.
#[proc_macro_attribute]
pub fn actor(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(
            Span::call_site(),
            "#[actor] takes no arguments; use `Type::options(ActorOptions)`",
        )
        .to_compile_error()
        .into();
    }
    let parsed = parse_macro_input!(item as Item);
    let out = match parsed {
        Item::Struct(s) => {
            if !s.generics.params.is_empty() {
                Err(syn::Error::new(
                    s.generics.span(),
                    "actor types cannot be generic",
                ))
            } else {
                Ok(quote!(#s))
            }
        }
        Item::Enum(e) => Ok(quote!(#e)),
        Item::Impl(i) => actor_impl(i),
        other => Err(syn::Error::new(
            other.span(),
            "#[mobula::actor] goes on the actor's struct and on its impl block",
        )),
    };
    match out {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn returns_self(ret: &ReturnType, ty_name: &syn::Ident) -> Option<bool> {
    let ReturnType::Type(_, t) = ret else {
        return None;
    };
    let is_self = |t: &Type| match t {
        Type::Path(tp) => tp
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "Self" || s.ident == *ty_name),
        _ => false,
    };
    if is_self(t) {
        return Some(false);
    }
    let r = analyse_return(ret);
    if r.fallible && is_self(&r.value) {
        return Some(true);
    }
    None
}

struct Method {
    f: ImplItemFn,
    params: Vec<(Pat, Type, String)>,
    ret: Ret,
    mutable: bool,
    is_async: bool,
}

struct Ctor {
    f: ImplItemFn,
    params: Vec<(Pat, Type, String)>,
    fallible: bool,
}

fn actor_impl(imp: ItemImpl) -> syn::Result<TokenStream2> {
    if imp.trait_.is_some() {
        return Err(syn::Error::new(
            imp.span(),
            "#[mobula::actor] goes on the type's inherent impl block, not a trait impl",
        ));
    }
    if !imp.generics.params.is_empty() {
        return Err(syn::Error::new(
            imp.generics.span(),
            "actor types cannot be generic",
        ));
    }
    let Type::Path(tp) = &*imp.self_ty else {
        return Err(syn::Error::new(imp.self_ty.span(), "expected a type name"));
    };
    let Some(last) = tp.path.segments.last() else {
        return Err(syn::Error::new(imp.self_ty.span(), "expected a type name"));
    };
    let ty_name = last.ident.clone();
    let ty_str = ty_name.to_string();
    let self_ty = &imp.self_ty;

    let mut methods = Vec::new();
    let mut ctors = Vec::new();
    for item in &imp.items {
        let ImplItem::Fn(f) = item else { continue };
        let recv = match f.sig.inputs.first() {
            Some(FnArg::Receiver(r)) => Some(r),
            _ => None,
        };
        match recv {
            None => {
                if let Some(fallible) = returns_self(&f.sig.output, &ty_name) {
                    reject_generics(&f.sig, "actor constructors")?;
                    if f.sig.asyncness.is_some() {
                        return Err(syn::Error::new(
                            f.sig.span(),
                            "actor constructors cannot be async",
                        ));
                    }
                    ctors.push(Ctor {
                        f: f.clone(),
                        params: params(&f.sig)?,
                        fallible,
                    });
                }
            }
            Some(r) => {
                if !matches!(f.vis, Visibility::Public(_)) {
                    continue;
                }
                if r.reference.is_none() {
                    return Err(syn::Error::new(
                        r.span(),
                        "remote actor methods take `&self` or `&mut self`",
                    ));
                }
                reject_generics(&f.sig, "actor methods")?;
                methods.push(Method {
                    f: f.clone(),
                    params: params(&f.sig)?,
                    ret: analyse_return(&f.sig.output),
                    mutable: r.mutability.is_some(),
                    is_async: f.sig.asyncness.is_some(),
                });
            }
        }
    }
    if ctors.is_empty() {
        return Err(syn::Error::new(
            imp.self_ty.span(),
            "an actor needs a constructor: an associated fn returning `Self` (e.g. `pub fn new(..) -> Self`)",
        ));
    }
    let is_async = methods.iter().any(|m| m.is_async);
    let client = format_ident!("__MobulaClient{}", ty_name);
    let builder = format_ident!("__MobulaBuilder{}", ty_name);
    let instance = format_ident!("__MobulaInstance{}", ty_name);

    // Client methods.
    let client_methods = methods.iter().map(|m| {
        let mname = &m.f.sig.ident;
        let mstr = mname.to_string();
        let display = format!("{ty_str}.{mstr}");
        let rty = &m.ret.value;
        let (decl, conv) = caller_params(&m.params);
        let doc = format!("Calls `{display}` on the actor.");
        quote! {
            #[doc = #doc]
            pub fn #mname(&self, #(#decl),*) -> ::mobula::ObjectRef<#rty> {
                ::mobula::__private::call_actor(&self.raw, #mstr, #display, vec![#(#conv),*])
            }
        }
    });

    // Dispatch of the instance.
    let arms = methods.iter().map(|m| {
        let mname = &m.f.sig.ident;
        let mstr = mname.to_string();
        let decode = decode_args(&m.params);
        let binds = call_bindings(&m.params);
        let tys: Vec<&Type> = m.params.iter().map(|p| &p.1).collect();
        let encode = encode_ret(m.ret.fallible, quote!(__out));
        if is_async {
            let lock = if m.mutable { quote!(write) } else { quote!(read) };
            let guard_mut = if m.mutable { quote!(mut) } else { quote!() };
            let invoke = if m.is_async {
                quote!(__g.#mname(#(#binds),*).await)
            } else {
                quote!(__g.#mname(#(#binds),*))
            };
            quote! {
                #mstr => {
                    let __decoded = (|| -> ::std::result::Result<(#(#tys,)*), ::mobula::__private::UserError> {
                        #decode
                        Ok((#(#binds,)*))
                    })();
                    match __decoded {
                        Err(e) => ::mobula::__private::done(Err(e)),
                        Ok((#(#binds,)*)) => {
                            let __state = self.0.clone();
                            ::mobula::__private::MethodOutcome::Pending(::std::boxed::Box::pin(async move {
                                let #guard_mut __g = __state.#lock().await;
                                let __out = #invoke;
                                #encode
                            }))
                        }
                    }
                }
            }
        } else {
            quote! {
                #mstr => {
                    let __this = &mut self.0;
                    ::mobula::__private::done((move || {
                        #decode
                        let __out = __this.#mname(#(#binds),*);
                        #encode
                    })())
                }
            }
        }
    });

    let (state_ty, wrap) = if is_async {
        (
            quote!(::std::rc::Rc<::mobula::__private::RwLock<#self_ty>>),
            quote!(::std::rc::Rc::new(::mobula::__private::RwLock::new(__v))),
        )
    } else {
        (quote!(#self_ty), quote!(__v))
    };

    let ctor_arms = ctors.iter().map(|c| {
        let cname = &c.f.sig.ident;
        let cstr = cname.to_string();
        let decode = decode_args(&c.params);
        let binds = call_bindings(&c.params);
        let build = if c.fallible {
            quote! {
                let __v = <#self_ty>::#cname(#(#binds),*)
                    .map_err(|e| ::mobula::__private::UserError::Failed(e.to_string()))?;
            }
        } else {
            quote!(let __v = <#self_ty>::#cname(#(#binds),*);)
        };
        quote! {
            #cstr => {
                #decode
                #build
                Ok(::std::boxed::Box::new(#instance(#wrap)))
            }
        }
    });

    // Creation entry points.
    let mut type_fns = Vec::new();
    let mut builder_fns = Vec::new();
    for c in &ctors {
        let cname = &c.f.sig.ident;
        let cstr = cname.to_string();
        let entry = if cstr == "new" {
            format_ident!("remote")
        } else {
            format_ident!("remote_{}", cname)
        };
        let (decl, conv) = caller_params(&c.params);
        let (decl2, _) = caller_params(&c.params);
        let args: Vec<TokenStream2> = (0..c.params.len())
            .map(|i| {
                let a = format_ident!("__a{}", i);
                quote!(#a)
            })
            .collect();
        let doc = format!("Creates the actor with `{ty_str}::{cstr}` and default options.");
        type_fns.push(quote! {
            #[doc = #doc]
            pub fn #entry(rt: &::mobula::Runtime, #(#decl2),*) -> ::mobula::Result<::mobula::ActorHandle<#self_ty>> {
                Self::options(::mobula::ActorOptions::default()).#entry(rt, #(#args),*)
            }
        });
        let doc = format!("Creates the actor with `{ty_str}::{cstr}`.");
        builder_fns.push(quote! {
            #[doc = #doc]
            pub fn #entry(&self, rt: &::mobula::Runtime, #(#decl),*) -> ::mobula::Result<::mobula::ActorHandle<#self_ty>> {
                ::mobula::__private::create_actor::<#self_ty>(rt, &self.0, #cstr, vec![#(#conv),*])
            }
        });
    }

    let client_doc =
        format!("Remote methods of [`{ty_str}`], reached through `ActorHandle<{ty_str}>`.");
    let builder_doc = format!("Creation of a [`{ty_str}`] actor with options.");
    Ok(quote! {
        // `new` is the remote constructor, called through `Type::remote`: a `Default` impl
        // would not be used.
        #[allow(clippy::new_without_default)]
        #imp

        #[doc = #client_doc]
        #[derive(Clone, Debug)]
        #[allow(non_camel_case_types)]
        pub struct #client {
            raw: ::mobula::RawActorHandle,
        }

        impl ::std::convert::From<::mobula::RawActorHandle> for #client {
            fn from(raw: ::mobula::RawActorHandle) -> Self {
                Self { raw }
            }
        }

        impl ::std::convert::AsRef<::mobula::RawActorHandle> for #client {
            fn as_ref(&self) -> &::mobula::RawActorHandle {
                &self.raw
            }
        }

        #[allow(clippy::too_many_arguments)]
        impl #client {
            #(#client_methods)*
        }

        impl ::mobula::ActorType for #self_ty {
            const CLASS_ID: &'static str = concat!(module_path!(), "::", #ty_str);
            const CLASS_NAME: &'static str = #ty_str;
            const IS_ASYNC: bool = #is_async;
            type Client = #client;
        }

        #[doc = #builder_doc]
        #[derive(Clone, Debug)]
        #[allow(non_camel_case_types)]
        pub struct #builder(pub ::mobula::ActorOptions);

        #[allow(clippy::too_many_arguments)]
        impl #builder {
            #(#builder_fns)*
        }

        #[allow(clippy::too_many_arguments)]
        impl #self_ty {
            #(#type_fns)*

            /// Creation with options.
            pub fn options(opts: ::mobula::ActorOptions) -> #builder {
                #builder(opts)
            }
        }

        #[doc(hidden)]
        #[allow(non_camel_case_types)]
        struct #instance(#state_ty);

        const _: () = {
            impl ::mobula::__private::ActorInstance for #instance {
                #[allow(unused_mut, clippy::redundant_closure_call)]
                fn call(
                    &mut self,
                    __method: &str,
                    __args: ::std::vec::Vec<::mobula::__private::Bytes>,
                ) -> ::mobula::__private::MethodOutcome {
                    match __method {
                        #(#arms)*
                        other => ::mobula::__private::done(Err(
                            ::mobula::__private::UserError::NoSuchMethod(format!("{}.{}", #ty_str, other)),
                        )),
                    }
                }
            }

            fn __construct(
                __ctor: &str,
                __args: ::std::vec::Vec<::mobula::__private::Bytes>,
            ) -> ::std::result::Result<
                ::std::boxed::Box<dyn ::mobula::__private::ActorInstance>,
                ::mobula::__private::UserError,
            > {
                match __ctor {
                    #(#ctor_arms)*
                    other => Err(::mobula::__private::UserError::NoSuchMethod(format!("{}::{}", #ty_str, other))),
                }
            }

            #[::mobula::__private::linkme::distributed_slice(::mobula::__private::ACTOR_CLASSES)]
            #[linkme(crate = ::mobula::__private::linkme)]
            static __MOBULA_CLASS: ::mobula::__private::ActorClass = ::mobula::__private::ActorClass {
                id: <#self_ty as ::mobula::ActorType>::CLASS_ID,
                name: #ty_str,
                is_async: #is_async,
                construct: __construct,
            };
        };
    })
}

/// Marks the program's `main`: in a worker process started by mobula, it serves tasks and
/// exits before the body runs; otherwise the body runs as usual.
#[proc_macro_attribute]
pub fn main(_attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut f = parse_macro_input!(item as ItemFn);
    let body = &f.block;
    f.block = syn::parse_quote!({
        ::mobula::worker_entry();
        #body
    });
    quote!(#f).into()
}
