use std::time::Instant;
use rayon::prelude::*;
use vlmix_engine::blas;

fn time<F: FnMut()>(reps: usize, mut f: F) -> f64 { f(); let t = Instant::now(); for _ in 0..reps { f(); } t.elapsed().as_secs_f64() / reps as f64 }

fn main() {
    blas::init().unwrap();
    let shapes = [(false,true,2048usize,768usize,256usize),(false,false,2048,256,768),(true,false,768,256,2048),(false,true,2048,8192,256),(true,false,8192,256,2048)];
    for &(ta,tb,m,n,k) in &shapes {
        let a = vec![0.5f32; m*k]; let b = vec![0.25f32; k*n]; let mut c = vec![0.0f32; m*n];
        blas::set_num_threads(2);
        let t2 = time(10, || blas::sgemm(ta,tb,m,n,k,1.0,&a,&b,0.0,&mut c));
        blas::set_num_threads(1);
        let t1 = time(10, || blas::sgemm(ta,tb,m,n,k,1.0,&a,&b,0.0,&mut c));
        let flops = 2.0*(m*n*k) as f64;
        println!("{ta} {tb} {m}x{n}x{k}: 2thr {:.1} GF/s, 1thr {:.1} GF/s", flops/t2/1e9, flops/t1/1e9);
    }
    // batched small: 32 x (256x256x64)
    let (bh, t, hd) = (32usize, 256usize, 64usize);
    let q = vec![0.1f32; bh*t*hd]; let mut s = vec![0.0f32; bh*t*t];
    blas::set_num_threads(2);
    let ts = time(10, || for i in 0..bh { blas::sgemm(false,true,t,t,hd,1.0,&q[i*t*hd..],&q[i*t*hd..],0.0,&mut s[i*t*t..]); });
    blas::set_num_threads(1);
    let tp = time(10, || s.par_chunks_mut(t*t).enumerate().for_each(|(i,c)| blas::sgemm(false,true,t,t,hd,1.0,&q[i*t*hd..],&q[i*t*hd..],0.0,c)));
    let flops = 2.0*(bh*t*t*hd) as f64;
    println!("batched QK: seq 2thr {:.1} GF/s, rayon+1thr {:.1} GF/s", flops/ts/1e9, flops/tp/1e9);
}
