//! `#[simd]`: the CPU kernels' SIMD dispatch. Each marked function is compiled
//! for three levels and runs the one `crate::cpu::simd::level()` picks (the
//! best the CPU has, or the one `CUDANN_SIMD` pins); see src/cpu/simd.rs.

use proc_macro::TokenStream;
use quote::{format_ident, quote};
use syn::{FnArg, GenericParam, ItemFn, Pat, parse_macro_input};

/// x86-64-v4's features (AVX-512), the top level of multiversion's "simd"
/// targets that the kernels used before.
const AVX512: &str = "avx,avx2,avx512bw,avx512cd,avx512dq,avx512f,avx512vl,bmi1,bmi2,cmpxchg16b,f16c,fma,lzcnt,movbe,popcnt,sse3,sse4.1,sse4.2,ssse3,xsave";
/// x86-64-v3's features (AVX2 and FMA).
const AVX2: &str = "avx,avx2,bmi1,bmi2,cmpxchg16b,f16c,fma,lzcnt,movbe,popcnt,sse3,sse4.1,sse4.2,ssse3,xsave";

/// `detected!(avx512)` or `detected!(avx2)`: whether the CPU has every feature
/// that `#[simd]` compiles that level with (x86-64 only). One list serves both,
/// so a level is never run on a CPU that lacks one of its features.
#[proc_macro]
pub fn detected(input: TokenStream) -> TokenStream {
    let level = parse_macro_input!(input as syn::Ident);
    let features = match level.to_string().as_str() {
        "avx512" => AVX512,
        "avx2" => AVX2,
        _ => return syn::Error::new(level.span(), "expected avx512 or avx2").to_compile_error().into(),
    };
    let features = features.split(',');
    quote!((true #(&& std::arch::is_x86_feature_detected!(#features))*)).into()
}

/// On a free function: its body compiled with the AVX-512 features, with the
/// AVX2+FMA ones and for baseline x86-64 (the only one elsewhere), and a call
/// of the one `crate::cpu::simd::level()` picks. Inside the body,
/// `LEVEL: crate::cpu::simd::Level` is the level being compiled (a constant,
/// for code that must differ by level, such as fused multiply-adds).
/// Arguments must be plain names (`x` or `mut x`); generics are fine.
#[proc_macro_attribute]
pub fn simd(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(proc_macro2::Span::call_site(), "#[simd] takes no arguments").to_compile_error().into();
    }
    let func = parse_macro_input!(item as ItemFn);
    expand(func).unwrap_or_else(syn::Error::into_compile_error).into()
}

fn expand(func: ItemFn) -> syn::Result<proc_macro2::TokenStream> {
    let ItemFn { attrs, vis, sig, block } = func;
    // The dispatcher takes the arguments by plain name (no `mut`) and passes them on.
    let mut outer = sig.clone();
    let mut args = Vec::new();
    for input in &mut outer.inputs {
        let FnArg::Typed(typed) = input else {
            return Err(syn::Error::new_spanned(input, "#[simd] is for free functions"));
        };
        let Pat::Ident(pat) = &mut *typed.pat else {
            return Err(syn::Error::new_spanned(&typed.pat, "#[simd] needs plain argument names"));
        };
        pat.mutability = None;
        args.push(pat.ident.clone());
    }
    // Lifetimes are left to inference: naming late-bound ones is an error.
    let generics: Vec<_> = sig
        .generics
        .params
        .iter()
        .filter_map(|p| match p {
            GenericParam::Type(t) => Some(t.ident.clone()),
            GenericParam::Const(c) => Some(c.ident.clone()),
            GenericParam::Lifetime(_) => None,
        })
        .collect();
    let variant = |name: &str, level: &str, features: Option<&str>| {
        let mut sig = sig.clone();
        sig.ident = format_ident!("{name}");
        let level = format_ident!("{level}");
        let enable = features.map(|f| quote!(#[cfg(target_arch = "x86_64")] #[target_feature(enable = #f)]));
        quote! {
            #enable
            #sig {
                #[allow(dead_code)]
                const LEVEL: crate::cpu::simd::Level = crate::cpu::simd::Level::#level;
                #block
            }
        }
    };
    let avx512 = variant("avx512", "Avx512", Some(AVX512));
    let avx2 = variant("avx2", "Avx2", Some(AVX2));
    let scalar = variant("scalar", "Scalar", None);
    // A safe function's baseline variant is safe to call; the others need the
    // level's features, which `level()` has checked the CPU for.
    let call_scalar = match sig.unsafety {
        Some(_) => quote!(unsafe { scalar::<#(#generics),*>(#(#args),*) }),
        None => quote!(scalar::<#(#generics),*>(#(#args),*)),
    };
    Ok(quote! {
        #(#attrs)*
        #vis #outer {
            #avx512
            #avx2
            #scalar
            match crate::cpu::simd::level() {
                #[cfg(target_arch = "x86_64")]
                crate::cpu::simd::Level::Avx512 => unsafe { avx512::<#(#generics),*>(#(#args),*) },
                #[cfg(target_arch = "x86_64")]
                crate::cpu::simd::Level::Avx2 => unsafe { avx2::<#(#generics),*>(#(#args),*) },
                _ => #call_scalar,
            }
        }
    })
}
