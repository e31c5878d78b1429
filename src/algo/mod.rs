pub mod awq;
